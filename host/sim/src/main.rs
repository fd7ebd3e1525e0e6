//! `infergate-sim`: one simulated model server. Run several on different
//! loopback addresses and the same port, as pods would be.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// A simulated OpenAI-compatible model server with vLLM metrics.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.2:8000.
    #[arg(long, default_value = "127.0.0.1:8000")]
    bind: SocketAddr,
    /// Instance name, reported in the x-served-by header and the served_by field.
    #[arg(long, default_value = "sim")]
    name: String,
    /// The base model's name.
    #[arg(long, default_value = "sim-model")]
    model: String,
    /// LoRA adapters served as models besides the base model, comma separated.
    #[arg(long, value_delimiter = ',')]
    lora: Vec<String>,
    /// Requests that run at once; later ones wait in the queue.
    #[arg(long, default_value_t = 4)]
    max_num_seqs: usize,
    /// Time to the first token, in milliseconds: the fixed part (prefill overhead), before the
    /// prefill time of uncached prompt tokens (--prefill-us-per-token).
    #[arg(long, default_value_t = 20)]
    ttft_ms: u64,
    /// Prefill time of each prompt token not in the prefix cache, in microseconds (a token is
    /// four bytes of the prompt).
    #[arg(long, default_value_t = 0)]
    prefill_us_per_token: u64,
    /// Prompt blocks of 16 tokens the prefix cache holds (least recently used evicted); 0 turns
    /// it off.
    #[arg(long, default_value_t = 1024)]
    prefix_cache_blocks: usize,
    /// How much slower tokens come with a full batch (--max-num-seqs running) than with one
    /// request; growing linearly in between. 1: no slowdown.
    #[arg(long, default_value_t = 1.0)]
    time_factor_under_load: f64,
    /// LoRA adapters loaded at once (0: all); using another one unloads the least recently used
    /// and costs --lora-load-ms.
    #[arg(long, default_value_t = 0)]
    max_loras: usize,
    /// Time to load a LoRA adapter that is not loaded, in milliseconds.
    #[arg(long, default_value_t = 0)]
    lora_load_ms: u64,
    /// Standard deviation of Gaussian noise on every latency, as a fraction of it (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    latency_jitter: f64,
    /// Seed of the noise (0: derived from --name, so each server differs and every run repeats).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Time between further tokens, in milliseconds.
    #[arg(long, default_value_t = 5)]
    inter_token_ms: u64,
    /// KV-cache capacity in tokens; usage is the running requests' prompt
    /// and generated tokens over it.
    #[arg(long, default_value_t = 16384)]
    kv_cache_tokens: usize,
    /// Tokens to generate when a request has no max_tokens.
    #[arg(long, default_value_t = 16)]
    default_max_tokens: usize,
    /// Answer any other path with 200 and a JSON echo of the request, like the
    /// echo servers of the upstream conformance suite.
    #[arg(long)]
    echo_other_paths: bool,
    /// Accept POST /admin/health/fail and /admin/health/ok, which make /health answer 503 or 200
    /// (for tests that fail a readiness probe). Off by default: no client can take the server out.
    #[arg(long)]
    allow_health_toggle: bool,
    /// Log lines as text or as JSON objects (one per line). RUST_LOG filters them (default: info).
    #[arg(long, env = "INFERGATE_LOG_FORMAT", default_value = "text")]
    log_format: infergate_serving::telemetry::LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    infergate_serving::telemetry::init_logs(args.log_format);
    let config = infergate_sim::Config {
        name: args.name.clone(),
        model: args.model,
        lora_adapters: args.lora,
        max_num_seqs: args.max_num_seqs,
        time_to_first_token: Duration::from_millis(args.ttft_ms),
        inter_token_latency: Duration::from_millis(args.inter_token_ms),
        kv_cache_tokens: args.kv_cache_tokens,
        default_max_tokens: args.default_max_tokens,
        echo_other_paths: args.echo_other_paths,
        health_toggle: args.allow_health_toggle,
        prefill_time_per_token: Duration::from_micros(args.prefill_us_per_token),
        prefix_cache_blocks: args.prefix_cache_blocks,
        time_factor_under_load: args.time_factor_under_load,
        max_loras: args.max_loras,
        lora_load_time: Duration::from_millis(args.lora_load_ms),
        jitter: args.latency_jitter,
        seed: args.seed,
    };
    let handle = infergate_sim::start(args.bind, config).await?;
    tracing::info!(name = %args.name, address = %handle.address, "model server simulator listening");
    infergate_serving::telemetry::stop_requested().await;
    Ok(())
}
