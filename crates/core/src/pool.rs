//! A pool of ready pipelines shared by threads: the one way the CLI, the evaluation and the
//! detection worker run several pipelines at once.
//!
//! Why a pool and not a pipeline per thread: ONNX Runtime sessions must not run concurrently,
//! so a [`Pipeline`] is used by one thread at a time, but the threads that have work (CLI
//! workers, a worker's in-flight jobs) need not be the ones that own the sessions. A job borrows
//! a pipeline for its inference step only and gives it back, even when the step panics.

use std::sync::{Condvar, Mutex, MutexGuard};

use crate::error::ModelError;
use crate::pipeline::{Pipeline, PipelineConfig};

/// `n` pipelines and the model version they record faces under.
pub struct PipelinePool {
    free: Mutex<Vec<Pipeline>>,
    returned: Condvar,
    size: usize,
    model_version: String,
}

impl PipelinePool {
    /// Loads the models `n` times (at least once); fails on the first model or runtime error.
    pub fn new(cfg: &PipelineConfig, n: usize) -> Result<Self, ModelError> {
        let pipelines = (0..n.max(1))
            .map(|_| Pipeline::new(cfg))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_pipelines(pipelines))
    }

    /// A pool of already built pipelines (all of one model version).
    pub fn from_pipelines(pipelines: Vec<Pipeline>) -> Self {
        let model_version = pipelines
            .first()
            .map(|p| p.model_version().to_string())
            .unwrap_or_default();
        Self {
            size: pipelines.len(),
            free: Mutex::new(pipelines),
            returned: Condvar::new(),
            model_version,
        }
    }

    /// How many pipelines the pool holds.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The model version of the pool's pipelines ([`crate::model_version`]).
    pub fn model_version(&self) -> &str {
        &self.model_version
    }

    /// The stage times of the pipelines that are free now, summed (all of them when no job
    /// runs, e.g. at the end of a benchmark).
    pub fn stage_times(&self) -> crate::StageTimes {
        let mut total = crate::StageTimes::default();
        for p in lock(&self.free).iter() {
            total += p.stage_times();
        }
        total
    }

    /// Runs `f` with a free pipeline, blocking until one is free.
    ///
    /// # Panics
    /// When the pool is empty (built from no pipelines), since no call could ever proceed.
    pub fn with<R>(&self, f: impl FnOnce(&mut Pipeline) -> R) -> R {
        assert!(self.size > 0, "PipelinePool::with on an empty pool");
        let mut free = lock(&self.free);
        let pipeline = loop {
            match free.pop() {
                Some(p) => break p,
                None => free = self.returned.wait(free).unwrap_or_else(|p| p.into_inner()),
            }
        };
        drop(free);
        let mut borrowed = Borrowed {
            pool: self,
            pipeline: Some(pipeline),
        };
        match borrowed.pipeline.as_mut() {
            Some(p) => f(p),
            None => unreachable!("the pipeline is taken back only on drop"),
        }
    }
}

/// Gives the pipeline back on drop, so a panicking job does not shrink the pool.
struct Borrowed<'a> {
    pool: &'a PipelinePool,
    pipeline: Option<Pipeline>,
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pipeline.take() {
            lock(&self.pool.free).push(p);
            self.pool.returned.notify_one();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only whole pipelines are pushed and popped under the lock, so a poisoned lock (a panic
    // elsewhere while holding it) still guards a consistent list.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
