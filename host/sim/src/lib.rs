//! A simulated model server for tests, benchmarks and the quick start.
//!
//! It speaks enough of the OpenAI API (`/v1/completions`,
//! `/v1/chat/completions` and `/v1/responses` with and without SSE
//! streaming, `/v1/embeddings`, `/v1/models`; shapes in [`openai`]) for
//! a gateway and an endpoint picker to treat it as a vLLM instance: requests
//! queue for a fixed number of slots, running work fills a KV cache, and
//! `/metrics` reports both under vLLM's metric names. Every answer says which
//! instance gave it (`x-served-by` header, `served_by` body field).
//!
//! Latency follows a model ([`model`]), on the lines of llm-d's inference
//! simulator: time to first token = the fixed `time_to_first_token` +
//! uncached prompt tokens x `prefill_time_per_token` (+ an adapter's load
//! time when it was not loaded); then a token every `inter_token_latency`,
//! slower by up to `time_factor_under_load` as the batch fills; a prefix
//! cache of prompt blocks (LRU) spares the prefill of shared prefixes;
//! optional Gaussian jitter with a seed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

pub mod model;
mod openai;
use model::{Histogram, Jitter, LoadedAdapters, PrefixCache};
use openai::{Api, Reply};

/// How one simulator behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// Reported in every answer.
    pub name: String,
    /// The base model.
    pub model: String,
    /// LoRA adapters served besides the base model.
    pub lora_adapters: Vec<String>,
    /// Requests that run at once; the rest wait (vLLM's --max-num-seqs).
    pub max_num_seqs: usize,
    /// Time to the first token.
    pub time_to_first_token: Duration,
    /// Time between two further tokens.
    pub inter_token_latency: Duration,
    /// Tokens the KV cache holds; running requests fill it with their
    /// prompt and the tokens generated so far.
    pub kv_cache_tokens: usize,
    /// Tokens generated when a request does not say (max_tokens).
    pub default_max_tokens: usize,
    /// Answer every other path with 200 and a JSON echo of the request
    /// (method, path, who served it), as the echo servers of the upstream
    /// conformance suite do.
    pub echo_other_paths: bool,
    /// Accept `POST /admin/health/fail` and `POST /admin/health/ok`, which
    /// make `/health` answer 503 or 200: a test's way to fail a readiness
    /// probe. Off by default, so that no client can take a server out.
    pub health_toggle: bool,
    /// Prefill time of each prompt token not found in the prefix cache,
    /// added to `time_to_first_token`.
    pub prefill_time_per_token: Duration,
    /// Prompt blocks ([`model::BLOCK_TOKENS`] tokens) the prefix cache
    /// holds; 0 turns it off.
    pub prefix_cache_blocks: usize,
    /// How much slower tokens come with a full batch (`max_num_seqs`
    /// running) than with one request: 1 is not at all; in between it
    /// grows linearly with the running requests.
    pub time_factor_under_load: f64,
    /// LoRA adapters loaded at once (0: all of them); using another one
    /// unloads the least recently used and costs `lora_load_time`.
    pub max_loras: usize,
    pub lora_load_time: Duration,
    /// Standard deviation of Gaussian noise on every latency, as a
    /// fraction of it (0: none).
    pub jitter: f64,
    /// Seeds the noise (0: a seed made from `name`).
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "sim".into(),
            model: "sim-model".into(),
            lora_adapters: vec![],
            max_num_seqs: 4,
            time_to_first_token: Duration::from_millis(20),
            inter_token_latency: Duration::from_millis(5),
            kv_cache_tokens: 16 * 1024,
            default_max_tokens: 16,
            echo_other_paths: false,
            health_toggle: false,
            prefill_time_per_token: Duration::ZERO,
            prefix_cache_blocks: 1024,
            time_factor_under_load: 1.0,
            max_loras: 0,
            lora_load_time: Duration::ZERO,
            jitter: 0.0,
            seed: 0,
        }
    }
}

/// The latency model's state, under the load lock.
struct Model {
    prefix_cache: PrefixCache,
    loras: LoadedAdapters,
    jitter: Jitter,
    /// Prompt tokens looked up in the prefix cache, and found.
    prefix_queries: u64,
    prefix_hits: u64,
    ttft: Histogram,
    itl: Histogram,
    queue_time: Histogram,
    e2e: Histogram,
}

/// KV-cache blocks are this many tokens (vLLM's default).
const BLOCK_SIZE: usize = model::BLOCK_TOKENS;

#[derive(Default)]
struct Load {
    waiting: usize,
    running: usize,
    /// Tokens held in the KV cache by running requests.
    cached_tokens: usize,
    running_adapters: BTreeMap<String, usize>,
    waiting_adapters: BTreeMap<String, usize>,
    succeeded: u64,
}

struct Sim {
    config: Config,
    address: SocketAddr,
    slots: Semaphore,
    load: Mutex<Load>,
    model: Mutex<Model>,
    ids: AtomicU64,
    /// `/health` answers 503 (see [`Config::health_toggle`]).
    unhealthy: std::sync::atomic::AtomicBool,
}

/// A running simulator; it stops when dropped.
pub struct Handle {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Bind `address` and serve until the handle is dropped (HTTP/1.1 and
/// cleartext HTTP/2 on the same port).
pub async fn start(address: SocketAddr, config: Config) -> anyhow::Result<Handle> {
    anyhow::ensure!(config.max_num_seqs > 0, "--max-num-seqs must be at least 1");
    anyhow::ensure!(
        config.kv_cache_tokens > 0,
        "--kv-cache-tokens must be at least 1"
    );
    anyhow::ensure!(
        config.time_factor_under_load >= 1.0,
        "--time-factor-under-load must be at least 1.0 (a full batch is never faster)"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&config.jitter),
        "--latency-jitter must be from 0 to 1 (a fraction of each latency)"
    );
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("binding {address}: {e}"))?;
    let address = listener.local_addr()?;
    let sim = Arc::new(Sim::new(config, address));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = infergate_serving::Limits {
        // Each waiting request holds a connection; allow far more than slots.
        max_connections: 4096,
        ..Default::default()
    };
    let stopping = async move {
        let _ = stopped.await;
    };
    tokio::spawn(infergate_serving::accept_loop(
        listener,
        limits,
        stopping,
        move |stream| {
            let sim = sim.clone();
            async move {
                let service = hyper::service::service_fn(move |req| handle(sim.clone(), req));
                let _ = infergate_serving::http1_and_2(limits)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            }
        },
    ));
    Ok(Handle {
        address,
        stop: Some(stop),
    })
}

impl Sim {
    fn new(config: Config, address: SocketAddr) -> Sim {
        let seed = if config.seed == 0 {
            config.name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
            })
        } else {
            config.seed
        };
        let model = Model {
            prefix_cache: PrefixCache::new(config.prefix_cache_blocks),
            loras: LoadedAdapters::new(if config.max_loras == 0 {
                config.lora_adapters.len()
            } else {
                config.max_loras
            }),
            jitter: Jitter::new(seed, config.jitter),
            prefix_queries: 0,
            prefix_hits: 0,
            ttft: Histogram::new(model::TTFT_BUCKETS),
            itl: Histogram::new(model::ITL_BUCKETS),
            queue_time: Histogram::new(model::REQUEST_BUCKETS),
            e2e: Histogram::new(model::REQUEST_BUCKETS),
        };
        Sim {
            model: Mutex::new(model),
            slots: Semaphore::new(config.max_num_seqs),
            config,
            address,
            load: Mutex::new(Load::default()),
            ids: AtomicU64::new(0),
            unhealthy: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

async fn handle(sim: Arc<Sim>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let version = format!("{:?}", req.version());
    let response = match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => text(StatusCode::OK, sim.metrics()),
        (&Method::GET, "/health") => {
            if sim.unhealthy.load(std::sync::atomic::Ordering::Relaxed) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "failing on request\n".into(),
                )
            } else {
                text(StatusCode::OK, "ok\n".into())
            }
        }
        (&Method::POST, "/admin/health/fail" | "/admin/health/ok") if sim.config.health_toggle => {
            sim.unhealthy.store(
                path == "/admin/health/fail",
                std::sync::atomic::Ordering::Relaxed,
            );
            text(StatusCode::OK, "ok\n".into())
        }
        (&Method::GET, "/v1/models") => sim.models(),
        (&Method::POST, "/v1/completions") => sim.clone().generate(req, Api::Completions).await,
        (&Method::POST, "/v1/chat/completions") => sim.clone().generate(req, Api::Chat).await,
        (&Method::POST, "/v1/responses") => sim.clone().generate(req, Api::Responses).await,
        (&Method::POST, "/v1/embeddings") => sim.clone().embed(req).await,
        _ if sim.config.echo_other_paths => {
            let body = serde_json::json!({
                "method": req.method().as_str(),
                "path": path,
                "served_by": sim.config.name,
                "served_endpoint": sim.address.to_string(),
            });
            let mut response = Response::new(full(body.to_string()));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                "application/json".parse().expect("a header value"),
            );
            response
        }
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no route for {} {path}", req.method()),
        ),
    };
    let mut response = response;
    let headers = response.headers_mut();
    headers.insert(
        "x-served-by",
        sim.config.name.parse().expect("a header value"),
    );
    headers.insert(
        "x-served-endpoint",
        sim.address.to_string().parse().expect("a header value"),
    );
    // How the request arrived (HTTP/1.1 or HTTP/2.0), for h2c checks.
    headers.insert(
        "x-request-protocol",
        version.parse().expect("a header value"),
    );
    Ok(response)
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(full(body))
        .expect("a response")
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body.to_string()))
        .expect("a response")
}

/// An error in OpenAI's shape.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": status.as_u16()}}),
    )
}

/// A parsed generation request.
struct Job {
    model: String,
    prompt_tokens: usize,
    /// The prompt's block hashes, for the prefix cache.
    blocks: Vec<u64>,
    max_tokens: usize,
    stream: bool,
    /// `stream_options.include_usage`.
    include_usage: bool,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Sim {
    fn models(&self) -> Response<Body> {
        let created = unix_now();
        let mut data = vec![json!({
            "id": self.config.model, "object": "model", "created": created,
            "owned_by": "infergate-sim", "root": self.config.model, "parent": null,
        })];
        for adapter in &self.config.lora_adapters {
            data.push(json!({
                "id": adapter, "object": "model", "created": created,
                "owned_by": "infergate-sim", "root": adapter, "parent": self.config.model,
            }));
        }
        json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
    }

    fn parse(&self, body: &[u8], api: Api) -> Result<Job, (StatusCode, String)> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            )
        })?;
        let model = value
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    "the request has no \"model\"".to_string(),
                )
            })?
            .to_string();
        self.check_model(&model)?;
        let Some(prompt) = infergate_serving::prompt::prompt_text(&value) else {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("the request has no \"{}\"", api.prompt_field()),
            ));
        };
        let max_tokens = api
            .max_tokens_fields()
            .iter()
            .find_map(|field| value.get(*field).and_then(Value::as_u64))
            .map(|n| n as usize)
            .unwrap_or(self.config.default_max_tokens);
        Ok(Job {
            model,
            prompt_tokens: model::count_tokens(&prompt),
            blocks: model::block_hashes(&prompt),
            max_tokens,
            stream: value
                .get("stream")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            include_usage: value
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// vLLM answers 404 for a model it does not serve.
    fn check_model(&self, model: &str) -> Result<(), (StatusCode, String)> {
        if model != self.config.model && !self.config.lora_adapters.iter().any(|a| a == model) {
            return Err((
                StatusCode::NOT_FOUND,
                format!("the model `{model}` does not exist"),
            ));
        }
        Ok(())
    }

    /// `/v1/embeddings`: the inputs' vectors after the prefill of their
    /// tokens (no slot is taken: embedding models batch freely here).
    async fn embed(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let body = match req.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
        };
        let value: Value = match serde_json::from_slice(&body) {
            Ok(value) => value,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body is not JSON: {e}"),
                );
            }
        };
        let Some(model) = value.get("model").and_then(Value::as_str) else {
            return error(StatusCode::BAD_REQUEST, "the request has no \"model\"");
        };
        if let Err((status, message)) = self.check_model(model) {
            return error(status, &message);
        }
        let inputs: Vec<String> = match value.get("input") {
            Some(Value::String(text)) => vec![text.clone()],
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            // Token ids: one input, or a list of them.
            Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
                vec![Value::Array(items.clone()).to_string()]
            }
            Some(Value::Array(items)) if items.iter().all(Value::is_array) => {
                items.iter().map(Value::to_string).collect()
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "\"input\" must be a string, a list of strings or token ids",
                );
            }
        };
        let tokens: usize = inputs.iter().map(|i| model::count_tokens(i)).sum();
        tokio::time::sleep(
            self.config.time_to_first_token + self.config.prefill_time_per_token * tokens as u32,
        )
        .await;
        let base64 = value.get("encoding_format").and_then(Value::as_str) == Some("base64");
        json_response(
            StatusCode::OK,
            &openai::embeddings(model, &inputs, tokens, base64, &self.config.name),
        )
    }

    async fn generate(self: Arc<Self>, req: Request<Incoming>, api: Api) -> Response<Body> {
        let body = match req.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
        };
        let job = match self.parse(&body, api) {
            Ok(job) => job,
            Err((status, message)) => return error(status, &message),
        };
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<Token>(64);
        let (stream, include_usage) = (job.stream, job.include_usage);
        let model = job.model.clone();
        let (prompt_tokens, max_tokens) = (job.prompt_tokens, job.max_tokens);
        tokio::spawn(self.clone().run(job, tx));
        let reply = Reply {
            api,
            id: openai::answer_id(api, &self.config.name, id),
            created: unix_now(),
            model,
            served_by: self.config.name.clone(),
            prompt_tokens,
            include_usage,
        };
        if stream {
            let tokens = futures::StreamExt::map(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                |token: Token| token.text,
            );
            let body = StreamBody::new(futures::StreamExt::map(
                openai::stream(reply, tokens, max_tokens),
                |chunk| Ok::<_, Infallible>(Frame::data(chunk)),
            ));
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(BodyExt::boxed(body))
                .expect("a response")
        } else {
            let mut rx = rx;
            let mut text = String::new();
            let mut generated = 0;
            while let Some(token) = rx.recv().await {
                text.push_str(&token.text);
                generated += 1;
            }
            json_response(StatusCode::OK, &reply.whole(&text, generated, max_tokens))
        }
    }

    /// Wait for a slot, then produce tokens at the configured pace. The
    /// load figures follow the request; dropping the receiver (the client
    /// went away) frees the slot.
    async fn run(self: Arc<Self>, job: Job, tx: mpsc::Sender<Token>) {
        let arrived = tokio::time::Instant::now();
        let adapter = (job.model != self.config.model).then(|| job.model.clone());
        let waiting = LoadGuard::waiting(self.clone(), adapter.clone());
        let permit = tokio::select! {
            permit = self.slots.acquire() => permit,
            _ = tx.closed() => return,
        };
        let Ok(_permit) = permit else { return };
        drop(waiting);
        let scheduled = tokio::time::Instant::now();
        let first_token = self.prefill(&job, adapter.as_deref(), scheduled - arrived);
        let mut running = LoadGuard::running(self.clone(), adapter, job.prompt_tokens);
        let mut last = scheduled;
        for n in 0..job.max_tokens {
            let pause = if n == 0 {
                first_token
            } else {
                self.decode_time()
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = tx.closed() => return,
            }
            let now = tokio::time::Instant::now();
            {
                let mut model = self.model.lock().expect("model lock");
                if n == 0 {
                    model.ttft.observe(now - arrived);
                } else {
                    model.itl.observe(now - last);
                }
            }
            last = now;
            running.add_token();
            let text = format!(" token{}", n + 1);
            if tx.send(Token { text }).await.is_err() {
                return;
            }
        }
        self.model
            .lock()
            .expect("model lock")
            .e2e
            .observe(arrived.elapsed());
        running.succeeded();
    }

    /// Schedule `job`'s prefill: look its prompt up in the prefix cache
    /// (and remember it there), load its adapter if need be; the time to
    /// its first token.
    fn prefill(&self, job: &Job, adapter: Option<&str>, queued: Duration) -> Duration {
        let mut model = self.model.lock().expect("model lock");
        model.queue_time.observe(queued);
        let hit_tokens = (model.prefix_cache.cached_prefix(&job.blocks) * model::BLOCK_TOKENS)
            .min(job.prompt_tokens);
        model.prefix_queries += job.prompt_tokens as u64;
        model.prefix_hits += hit_tokens as u64;
        model.prefix_cache.insert(&job.blocks);
        let uncached = (job.prompt_tokens - hit_tokens) as u32;
        let prefill =
            self.config.time_to_first_token + self.config.prefill_time_per_token * uncached;
        let load = match adapter {
            Some(adapter) if model.loras.use_adapter(adapter) => self.config.lora_load_time,
            _ => Duration::ZERO,
        };
        model.jitter.apply(prefill) + load
    }

    /// The time to the next token now: slower as the batch fills.
    fn decode_time(&self) -> Duration {
        let running = self.load.lock().expect("load lock").running;
        let factor = if self.config.max_num_seqs > 1 {
            1.0 + (self.config.time_factor_under_load - 1.0)
                * (running.saturating_sub(1) as f64 / (self.config.max_num_seqs - 1) as f64)
        } else {
            self.config.time_factor_under_load
        };
        let pause = self.config.inter_token_latency.mul_f64(factor);
        self.model.lock().expect("model lock").jitter.apply(pause)
    }

    fn metrics(&self) -> String {
        let load = self.load.lock().expect("load lock");
        let model = &self.config.model;
        let usage = (load.cached_tokens as f64 / self.config.kv_cache_tokens as f64).min(1.0);
        let list = |m: &BTreeMap<String, usize>| m.keys().cloned().collect::<Vec<_>>().join(",");
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, labels: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {value}\n"
            ));
        };
        let model_label = format!("model_name=\"{model}\"");
        gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            &model_label,
            load.waiting.to_string(),
        );
        gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            &model_label,
            load.running.to_string(),
        );
        gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            &model_label,
            format!("{usage}"),
        );
        gauge(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage (the name before vLLM 0.10). 1 means 100 percent usage.",
            &model_label,
            format!("{usage}"),
        );
        let max_lora = if self.config.max_loras == 0 {
            self.config.lora_adapters.len()
        } else {
            self.config.max_loras
        };
        gauge(
            "vllm:lora_requests_info",
            "Running stats on LoRA requests.",
            &format!(
                "max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"",
                max_lora.max(1),
                list(&load.running_adapters),
                list(&load.waiting_adapters)
            ),
            format!("{}", unix_now()),
        );
        gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig.",
            &format!(
                "block_size=\"{BLOCK_SIZE}\",num_gpu_blocks=\"{}\"",
                self.config.kv_cache_tokens.div_ceil(BLOCK_SIZE)
            ),
            "1".into(),
        );
        out.push_str(&format!(
            "# HELP vllm:request_success_total Count of successfully processed requests.\n# TYPE vllm:request_success_total counter\nvllm:request_success_total{{{model_label}}} {}\n",
            load.succeeded
        ));
        drop(load);
        let model = self.model.lock().expect("model lock");
        for (name, help, value) in [
            (
                "vllm:prefix_cache_queries_total",
                "Prefix cache queries, in prompt tokens looked up.",
                model.prefix_queries,
            ),
            (
                "vllm:prefix_cache_hits_total",
                "Prefix cache hits, in prompt tokens found.",
                model.prefix_hits,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{model_label}}} {value}\n"
            ));
        }
        for (histogram, name, help) in [
            (
                &model.ttft,
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
            ),
            (
                &model.itl,
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
            ),
            (
                &model.queue_time,
                "vllm:request_queue_time_seconds",
                "Histogram of time spent waiting in the queue in seconds.",
            ),
            (
                &model.e2e,
                "vllm:e2e_request_latency_seconds",
                "Histogram of end to end request latency in seconds.",
            ),
        ] {
            out.push_str(&histogram.render(name, help, &model_label));
        }
        out
    }
}

struct Token {
    text: String,
}

/// Keeps the load figures true for one request whatever way it ends.
struct LoadGuard {
    sim: Arc<Sim>,
    adapter: Option<String>,
    running: bool,
    tokens: usize,
}

fn bump(map: &mut BTreeMap<String, usize>, key: &Option<String>, up: bool) {
    let Some(key) = key else { return };
    if up {
        *map.entry(key.clone()).or_default() += 1;
    } else if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl LoadGuard {
    fn waiting(sim: Arc<Sim>, adapter: Option<String>) -> Self {
        {
            let mut load = sim.load.lock().expect("load lock");
            load.waiting += 1;
            bump(&mut load.waiting_adapters, &adapter, true);
        }
        LoadGuard {
            sim,
            adapter,
            running: false,
            tokens: 0,
        }
    }

    fn running(sim: Arc<Sim>, adapter: Option<String>, tokens: usize) -> Self {
        {
            let mut load = sim.load.lock().expect("load lock");
            load.running += 1;
            load.cached_tokens += tokens;
            bump(&mut load.running_adapters, &adapter, true);
        }
        LoadGuard {
            sim,
            adapter,
            running: true,
            tokens,
        }
    }

    fn add_token(&mut self) {
        self.tokens += 1;
        self.sim.load.lock().expect("load lock").cached_tokens += 1;
    }

    fn succeeded(&self) {
        self.sim.load.lock().expect("load lock").succeeded += 1;
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut load = self.sim.load.lock().expect("load lock");
        if self.running {
            load.running -= 1;
            load.cached_tokens -= self.tokens;
            bump(&mut load.running_adapters, &self.adapter, false);
        } else {
            load.waiting -= 1;
            bump(&mut load.waiting_adapters, &self.adapter, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(config: Config) -> Sim {
        Sim::new(config, "127.0.0.1:0".parse().unwrap())
    }

    fn job(sim: &Sim, prompt: &str) -> Job {
        let body = json!({"model": "sim-model", "prompt": prompt}).to_string();
        sim.parse(body.as_bytes(), Api::Completions).unwrap()
    }

    #[test]
    fn cached_prefixes_are_not_prefilled_again() {
        let s = sim(Config {
            time_to_first_token: Duration::from_millis(10),
            prefill_time_per_token: Duration::from_millis(1),
            ..Config::default()
        });
        // 4 full blocks (64 tokens) of system prompt, then a question.
        let system = "a".repeat(4 * model::BLOCK_TOKENS * model::TOKEN_BYTES);
        let first = job(&s, &format!("{system}What is a gateway?"));
        assert_eq!(first.prompt_tokens, 64 + 5);
        assert_eq!(
            s.prefill(&first, None, Duration::ZERO),
            Duration::from_millis(10 + 69),
            "nothing cached: every token is prefilled"
        );
        let second = job(&s, &format!("{system}And what is a picker?"));
        assert_eq!(
            s.prefill(&second, None, Duration::ZERO),
            Duration::from_millis(10 + (second.prompt_tokens as u64 - 64)),
            "the shared system prompt is cached"
        );
        let text = s.metrics();
        assert!(
            text.contains(&format!(
                "vllm:prefix_cache_queries_total{{model_name=\"sim-model\"}} {}\n",
                69 + second.prompt_tokens
            )),
            "{text}"
        );
        assert!(
            text.contains("vllm:prefix_cache_hits_total{model_name=\"sim-model\"} 64\n"),
            "{text}"
        );
        assert!(
            text.contains("vllm:request_queue_time_seconds_count{model_name=\"sim-model\"} 2\n"),
            "{text}"
        );

        let off = sim(Config {
            prefix_cache_blocks: 0,
            prefill_time_per_token: Duration::from_millis(1),
            time_to_first_token: Duration::ZERO,
            ..Config::default()
        });
        let again = job(&off, &system);
        off.prefill(&again, None, Duration::ZERO);
        assert_eq!(
            off.prefill(&again, None, Duration::ZERO),
            Duration::from_millis(64)
        );
    }

    #[test]
    fn tokens_slow_down_as_the_batch_fills() {
        let s = sim(Config {
            max_num_seqs: 5,
            inter_token_latency: Duration::from_millis(10),
            time_factor_under_load: 3.0,
            ..Config::default()
        });
        let with = |running| {
            s.load.lock().unwrap().running = running;
            s.decode_time()
        };
        assert_eq!(with(1), Duration::from_millis(10));
        assert_eq!(with(3), Duration::from_millis(20));
        assert_eq!(with(5), Duration::from_millis(30));
    }

    #[test]
    fn an_adapter_that_is_not_loaded_costs_its_load_time() {
        let s = sim(Config {
            lora_adapters: vec!["a".into(), "b".into()],
            max_loras: 1,
            lora_load_time: Duration::from_millis(50),
            time_to_first_token: Duration::from_millis(5),
            ..Config::default()
        });
        let j = job(&s, "hi");
        assert_eq!(
            s.prefill(&j, Some("a"), Duration::ZERO),
            Duration::from_millis(55)
        );
        assert_eq!(
            s.prefill(&j, Some("a"), Duration::ZERO),
            Duration::from_millis(5)
        );
        assert_eq!(
            s.prefill(&j, Some("b"), Duration::ZERO),
            Duration::from_millis(55)
        );
        assert_eq!(
            s.prefill(&j, Some("a"), Duration::ZERO),
            Duration::from_millis(55),
            "b unloaded a"
        );
        assert!(s.metrics().contains("max_lora=\"1\""));
    }
}
