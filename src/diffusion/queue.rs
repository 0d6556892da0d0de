//! Forming batches from the queue of waiting image requests.
//!
//! The oldest request always goes next, so none waits forever; later requests that share its
//! [`BatchKey`] join it, up to an image budget, and the rest keep their order.

use super::batch::BatchKey;
use std::collections::VecDeque;

/// What the batcher needs to know of a queued request.
pub trait Batchable {
    fn batch_key(&self) -> BatchKey;
    fn images(&self) -> usize;
}

/// Takes the next batch off `queue`: its oldest request plus every later one with the same
/// key while the batch holds at most `max_images` images (the oldest goes even if it alone
/// holds more). Empty only when the queue is.
pub fn take_batch<T: Batchable>(queue: &mut VecDeque<T>, max_images: usize) -> Vec<T> {
    let Some(first) = queue.pop_front() else {
        return Vec::new();
    };
    let key = first.batch_key();
    let mut images = first.images();
    let mut batch = vec![first];
    let mut rest = VecDeque::with_capacity(queue.len());
    while let Some(job) = queue.pop_front() {
        if job.batch_key() == key && images + job.images() <= max_images {
            images += job.images();
            batch.push(job);
        } else {
            rest.push_back(job);
        }
    }
    *queue = rest;
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Job {
        name: &'static str,
        steps: usize,
        images: usize,
    }

    impl Batchable for Job {
        fn batch_key(&self) -> BatchKey {
            BatchKey {
                width: 64,
                height: 64,
                steps: self.steps,
                guidance_bits: 0,
            }
        }
        fn images(&self) -> usize {
            self.images
        }
    }

    fn job(name: &'static str, steps: usize, images: usize) -> Job {
        Job {
            name,
            steps,
            images,
        }
    }

    fn names(jobs: &[Job]) -> Vec<&'static str> {
        jobs.iter().map(|j| j.name).collect()
    }

    #[test]
    fn the_oldest_goes_first_with_every_match_within_the_budget() {
        let mut queue: VecDeque<Job> = [
            job("a", 4, 2),
            job("b", 8, 1),
            job("c", 4, 3),
            job("d", 4, 4),
            job("e", 4, 1),
        ]
        .into();
        // d would bring the batch to 9 images: it waits, e still fits.
        assert_eq!(names(&take_batch(&mut queue, 8)), ["a", "c", "e"]);
        assert_eq!(names(&take_batch(&mut queue, 8)), ["b"]);
        assert_eq!(names(&take_batch(&mut queue, 8)), ["d"]);
        assert!(take_batch(&mut queue, 8).is_empty());
    }

    #[test]
    fn a_request_larger_than_the_budget_still_runs() {
        let mut queue: VecDeque<Job> = [job("big", 4, 10), job("small", 4, 1)].into();
        assert_eq!(names(&take_batch(&mut queue, 4)), ["big"]);
        assert_eq!(names(&take_batch(&mut queue, 4)), ["small"]);
    }
}
