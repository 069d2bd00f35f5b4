//! The `noop` step: records itself, does nothing. For probes and benchmarks.

use super::{Executor, StepContext, StepOutcome};
use runlane_core::steps::NoopStep;

#[derive(Debug, Default)]
pub struct NoopExecutor;

impl Executor for NoopExecutor {
    type Spec = NoopStep;

    async fn run(&self, _spec: &NoopStep, ctx: &StepContext) -> StepOutcome {
        if ctx.cancel.is_cancelled() {
            return StepOutcome::cancelled();
        }
        StepOutcome::succeeded(None)
    }
}
