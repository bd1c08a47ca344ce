//! GPU utilisation and memory as EMF metrics (`GpuUtilization` in percent, `GpuMemoryUsed` and
//! `GpuMemoryTotal` in megabytes, under the same `Service` dimension as every other metric, which
//! the CloudFormation alarms and dashboard query; a Batch worker has one GPU), sampled from
//! `nvidia-smi`, which the NVIDIA container
//! runtime mounts into every GPU container; no NVML binding has to be linked, and a CPU-only
//! build stays free of GPU code.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::metrics::{Metrics, Unit};

/// One reading of one device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuSample {
    pub utilization_percent: f64,
    pub memory_used_mb: f64,
    pub memory_total_mb: f64,
}

/// Samples `device` every `interval` until `shutdown`, emitting one EMF line per sample. Stops
/// (with one warning) when `nvidia-smi` is missing or fails: metrics must never stop the work.
pub fn spawn_sampler(
    metrics: Arc<Metrics>,
    device: u32,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match sample(device).await {
                Ok(s) => metrics.emit(
                    &[],
                    &[
                        ("GpuUtilization", s.utilization_percent, Unit::Percent),
                        ("GpuMemoryUsed", s.memory_used_mb, Unit::Megabytes),
                        ("GpuMemoryTotal", s.memory_total_mb, Unit::Megabytes),
                    ],
                ),
                Err(e) => {
                    warn!(error = %e, "GPU metrics unavailable; not sampling again");
                    return;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    })
}

async fn sample(device: u32) -> Result<GpuSample, String> {
    let out = tokio::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=utilization.gpu,memory.used,memory.total",
            "--format=csv,noheader,nounits",
            "-i",
            &device.to_string(),
        ])
        .output()
        .await
        .map_err(|e| format!("cannot run nvidia-smi: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nvidia-smi failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// Parses `nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total
/// --format=csv,noheader,nounits` output for one device, e.g. `"37, 5120, 15360"`.
pub fn parse(text: &str) -> Result<GpuSample, String> {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .ok_or("empty nvidia-smi output")?;
    let fields: Vec<f64> = line
        .split(',')
        .map(|f| f.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("unexpected nvidia-smi output {line:?}: {e}"))?;
    match fields.as_slice() {
        [u, used, total] => Ok(GpuSample {
            utilization_percent: *u,
            memory_used_mb: *used,
            memory_total_mb: *total,
        }),
        _ => Err(format!("unexpected nvidia-smi output {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nvidia_smi_csv() {
        let s = parse("37, 5120, 15360\n").expect("parse");
        assert_eq!(
            s,
            GpuSample {
                utilization_percent: 37.0,
                memory_used_mb: 5120.0,
                memory_total_mb: 15360.0
            }
        );
        assert!(parse("").is_err());
        assert!(parse("[N/A], 10, 20").is_err());
        assert!(parse("1, 2").is_err());
    }
}
