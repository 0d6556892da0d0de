fn main() { println!("{}", kiln::version()); }
