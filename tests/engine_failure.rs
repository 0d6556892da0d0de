//! A failing or panicking model step fails the engine cleanly: in-flight requests get an
//! error, new ones are refused, the failure is visible to health checks, nothing hangs.

mod common;

use kiln::engine::runner::{Runner, StepInput, StepOutput};
use kiln::engine::{EngineConfig, EngineHandle, LlmEngine, RequestError, SamplingParams};
use kiln::model::tokenizer::Tokenizer;
use std::sync::Arc;

struct Broken {
    panic: bool,
}

impl Runner for Broken {
    fn execute(&mut self, _: &StepInput) -> anyhow::Result<StepOutput> {
        if self.panic {
            panic!("kernel exploded");
        }
        anyhow::bail!("device lost")
    }
    fn vocab_size(&self) -> usize {
        448
    }
    fn describe(&self) -> String {
        "broken".into()
    }
    fn weight_bytes(&self) -> u64 {
        0
    }
}

fn handle(panic: bool) -> EngineHandle {
    let tokenizer = Tokenizer::from_dir(&common::fixture("llama")).unwrap();
    let config = EngineConfig {
        max_model_len: 64,
        max_num_seqs: 4,
        max_num_batched_tokens: 64,
        block_size: 4,
        num_blocks: 64,
        enable_prefix_caching: true,
        seed: 0,
        scheduling_policy: Default::default(),
    };
    let engine = LlmEngine::new(
        config,
        Box::new(Broken { panic }),
        Arc::new(tokenizer),
        vec![],
    )
    .unwrap();
    EngineHandle::spawn(engine, 0)
}

#[test]
fn a_step_error_or_panic_fails_requests_and_marks_the_engine_failed() {
    for (panic, cause) in [(false, "device lost"), (true, "kernel exploded")] {
        let h = handle(panic);
        let err = h
            .submit(vec![5, 6, 7], SamplingParams::greedy())
            .unwrap()
            .collect_blocking()
            .unwrap_err();
        assert!(err.contains(cause), "{err}");
        let failure = h.stats().failure().expect("engine marked failed");
        assert!(failure.contains(cause), "{failure}");
        assert!(matches!(
            h.submit(vec![5], SamplingParams::greedy()),
            Err(RequestError::EngineDown(_))
        ));
        h.shutdown();
    }
}
