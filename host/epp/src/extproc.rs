//! The endpoint picker protocol over Envoy's ext_proc.
//!
//! Request path, full-duplex (request body mode FULL_DUPLEX_STREAMED, the
//! reference setup): the header reply is held until the body has ended; then
//! the picker answers the request headers with `clear_route_cache`, the
//! destination header, the body's Content-Length and the `envoy.lb`
//! metadata, and streams the body back in chunks of at most
//! [`MAX_CHUNK`] bytes. Buffered (BUFFERED / BUFFERED_PARTIAL, or no body):
//! the headers are answered at once, and the pick rides on the body reply.
//!
//! Response path: headers are answered at once (in test mode with the
//! served endpoint echoed); body chunks go back as they come (full duplex,
//! or chunk for chunk), read on the way for the per-model metrics, with a
//! rewritten model's name put back (`response_body`), so streamed
//! completions reach the client token by token.
//!
//! The request's model may be served under another name (the route's
//! rewrites, gRPC metadata of the stream): the body goes on renamed, and a
//! streamed completion that did not ask for its usage is asked for it
//! (`request_body`).

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
    HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse, StreamedBodyResponse,
    TrailersResponse, body_mutation, processing_request, processing_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::models::{ModelChoice, RouteModels};
use crate::request_body::RequestFacts;
use crate::response_body::ResponseBody;
use crate::scheduler::{Filter, Pick, PickError, Scheduler};

pub use infergate_names::picker::{
    DESTINATION as DESTINATION_HEADER, LB_NAMESPACE, SERVED as SERVED_KEY, SUBSET as SUBSET_KEY,
    SUBSET_NAMESPACE,
};
pub const TEST_SELECTION_HEADER: &str = "test-epp-endpoint-selection";
pub const TEST_SERVED_HEADER: &str = "x-conformance-test-served-endpoint";
/// Body chunks sent back to Envoy stay under this size (Envoy's default
/// gRPC message limit leaves room for the framing).
pub const MAX_CHUNK: usize = 62_000;

pub use crate::metrics::Counters;

#[derive(Clone)]
pub struct Picker {
    pub scheduler: Arc<Scheduler>,
    pub counters: Arc<Counters>,
    /// The turns of the model rewrites' weighted splits.
    pub splits: Arc<crate::models::Splits>,
    pub test_header_steering: bool,
    pub max_body_bytes: usize,
}

impl Picker {
    pub fn into_service(self) -> ExternalProcessorServer<Self> {
        ExternalProcessorServer::new(self)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Picker {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (tx, rx) = mpsc::channel(32);
        let picker = self.clone();
        // What the gateway says of the route; a value the picker cannot
        // read costs the request its per-model labels and rewrites, not
        // its pick.
        let route = RouteModels::from_metadata(request.metadata()).unwrap_or_else(|error| {
            tracing::warn!("ignoring the route's model metadata: {error}");
            RouteModels::default()
        });
        let inbound = request.into_inner();
        tokio::spawn(async move {
            let mut exchange = Exchange::new(picker, tx.clone(), route);
            let result = exchange.run(inbound).await;
            exchange.end();
            if let Err(status) = result {
                exchange.picker.counters.protocol_errors.inc();
                tracing::warn!("ext_proc stream ended with an error: {}", status.message());
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// One HTTP request/response going through the picker.
struct Exchange {
    picker: Picker,
    tx: mpsc::Sender<Result<ProcessingResponse, Status>>,
    request_mode: BodySendMode,
    response_mode: BodySendMode,
    headers: Option<HttpHeaders>,
    /// The request body so far (full-duplex and buffered).
    body: Vec<u8>,
    /// The request's headers have been answered.
    headers_answered: bool,
    /// The request has been sent on (picked or refused).
    decided: bool,
    /// The endpoint chosen first, when one was.
    chosen: Option<std::net::SocketAddr>,
    /// What the gateway said of the route.
    route: RouteModels,
    /// When the request reached the picker.
    started: std::time::Instant,
    /// The request's model and the name it is served under, once picked.
    choice: Option<ModelChoice>,
    /// The body to send on instead of the client's (renamed model, usage
    /// asked for).
    new_body: Option<Vec<u8>>,
    /// The picker asked for the usage on the client's behalf.
    usage_asked: bool,
    /// The response: its status, and its body as read so far.
    status: Option<u16>,
    response: Option<ResponseBody>,
    /// The response has ended and was counted.
    counted: bool,
}

enum Outcome {
    Picked(Pick),
    Refuse(u16, String),
}

impl Exchange {
    fn new(
        picker: Picker,
        tx: mpsc::Sender<Result<ProcessingResponse, Status>>,
        route: RouteModels,
    ) -> Self {
        Exchange {
            picker,
            tx,
            request_mode: BodySendMode::None,
            response_mode: BodySendMode::None,
            headers: None,
            body: vec![],
            headers_answered: false,
            decided: false,
            chosen: None,
            route,
            started: std::time::Instant::now(),
            choice: None,
            new_body: None,
            usage_asked: false,
            status: None,
            response: None,
            counted: false,
        }
    }

    /// The stream is over: a request sent on whose response did not end
    /// is counted as broken (or as without a response).
    fn end(&mut self) {
        let broken = self.status.is_some();
        self.count(broken);
    }

    /// Count the request in the per-model metrics, once.
    fn count(&mut self, broken: bool) {
        let Some(choice) = &self.choice else { return };
        if self.counted {
            return;
        }
        self.counted = true;
        let body = self.response.as_ref();
        // Token times mean something for streamed answers only.
        let streamed = body.filter(|b| b.is_stream());
        let first = streamed.and_then(|b| b.first_token);
        let end = crate::metrics::Finished {
            status: self.status,
            broken,
            duration: self.started.elapsed(),
            usage: body.and_then(|b| b.usage),
            time_to_first_token: first.map(|t| t - self.started),
            decode_time: first
                .zip(streamed.and_then(|b| b.last_token))
                .map(|(a, b)| b - a),
        };
        self.picker.counters.models.finished(choice, &end);
    }

    async fn send(&self, response: processing_response::Response) -> Result<(), Status> {
        self.send_with(response, None).await
    }

    async fn send_with(
        &self,
        response: processing_response::Response,
        dynamic_metadata: Option<Struct>,
    ) -> Result<(), Status> {
        self.tx
            .send(Ok(ProcessingResponse {
                response: Some(response),
                dynamic_metadata,
                ..Default::default()
            }))
            .await
            .map_err(|_| Status::cancelled("Envoy closed the stream"))
    }

    async fn run(&mut self, mut inbound: Streaming<ProcessingRequest>) -> Result<(), Status> {
        while let Some(message) = inbound.next().await {
            let message = match message {
                Ok(message) => message,
                // Envoy went away (request finished, reset or cancelled).
                Err(_) => return Ok(()),
            };
            if let Some(config) = &message.protocol_config {
                self.request_mode =
                    BodySendMode::try_from(config.request_body_mode).unwrap_or(BodySendMode::None);
                self.response_mode =
                    BodySendMode::try_from(config.response_body_mode).unwrap_or(BodySendMode::None);
            }
            use processing_request::Request as R;
            match message.request.clone() {
                Some(R::RequestHeaders(headers)) => self.request_headers(&message, headers).await?,
                Some(R::RequestBody(body)) => {
                    if self.headers.is_none() {
                        return Err(Status::invalid_argument(
                            "request body before request headers",
                        ));
                    }
                    if self.decided {
                        // Refused already; Envoy may still be sending.
                        continue;
                    }
                    if self.body.len() + body.body.len() > self.picker.max_body_bytes {
                        self.picker.counters.too_large.inc();
                        let limit = self.picker.max_body_bytes;
                        self.refuse(
                            413,
                            format!("the request body is larger than {limit} bytes"),
                        )
                        .await?;
                        continue;
                    }
                    self.body.extend_from_slice(&body.body);
                    if body.end_of_stream {
                        self.decide(&message, false).await?;
                    } else if !self.full_duplex() {
                        // Streamed mode: each chunk expects its own reply.
                        self.send(processing_response::Response::RequestBody(
                            BodyResponse::default(),
                        ))
                        .await?;
                    }
                }
                Some(R::RequestTrailers(_)) => {
                    if !self.decided && self.headers.is_some() {
                        // The trailers end the body.
                        self.decide(&message, true).await?;
                    }
                    self.send(processing_response::Response::RequestTrailers(
                        TrailersResponse::default(),
                    ))
                    .await?;
                }
                Some(R::ResponseHeaders(headers)) => {
                    self.response_headers(&message, &headers).await?
                }
                Some(R::ResponseBody(body)) => self.response_body(body).await?,
                Some(R::ResponseTrailers(_)) => {
                    // The trailers end the body: what was held goes on.
                    if let Some(reader) = self.response.as_mut() {
                        let rest = reader.push(&[], true, std::time::Instant::now());
                        if !rest.is_empty()
                            && self.response_mode == BodySendMode::FullDuplexStreamed
                        {
                            self.send(processing_response::Response::ResponseBody(BodyResponse {
                                response: Some(streamed(rest, false)),
                            }))
                            .await?;
                        }
                    }
                    self.count(false);
                    self.send(processing_response::Response::ResponseTrailers(
                        TrailersResponse::default(),
                    ))
                    .await?
                }
                None => {
                    return Err(Status::invalid_argument(
                        "a ProcessingRequest without headers, body or trailers",
                    ));
                }
            }
        }
        Ok(())
    }

    fn full_duplex(&self) -> bool {
        self.request_mode == BodySendMode::FullDuplexStreamed
    }

    async fn request_headers(
        &mut self,
        message: &ProcessingRequest,
        headers: HttpHeaders,
    ) -> Result<(), Status> {
        if self.headers.is_some() {
            return Err(Status::invalid_argument("request headers received twice"));
        }
        let end_of_stream = headers.end_of_stream;
        self.headers = Some(headers);
        self.started = std::time::Instant::now();
        if end_of_stream {
            // No body: pick now.
            return self.decide(message, false).await;
        }
        if !self.full_duplex() {
            self.headers_answered = true;
            self.send(processing_response::Response::RequestHeaders(
                HeadersResponse::default(),
            ))
            .await?;
        }
        Ok(())
    }

    /// The whole request is known: pick and send it on, or refuse it.
    async fn decide(
        &mut self,
        message: &ProcessingRequest,
        trailers_follow: bool,
    ) -> Result<(), Status> {
        self.decided = true;
        let outcome = self.outcome(message);
        let pick = match outcome {
            Outcome::Picked(pick) => pick,
            Outcome::Refuse(status, text) => return self.refuse(status, text).await,
        };
        let counters = &self.picker.counters;
        counters.picked.inc();
        if !pick.informed {
            counters.picked_uninformed.inc();
        }
        counters.decided(pick.decided_by);
        self.chosen = pick.endpoints.first().copied();
        let destination = pick.header_value();
        tracing::debug!(
            destination = %destination,
            informed = pick.informed,
            decided_by = pick.decided_by.name(),
            "picked"
        );
        if let Some(choice) = &self.choice {
            counters.models.started(choice);
        }
        let metadata = Some(lb_metadata(&destination));
        let mut set = vec![header(DESTINATION_HEADER, &destination)];
        let has_body = !self.body.is_empty() || !self.headers_end_of_stream();
        let new_body = self.new_body.take();
        if let Some(body) = &new_body {
            set.push(header("content-length", &body.len().to_string()));
        } else if self.full_duplex() && has_body {
            set.push(header("content-length", &self.body.len().to_string()));
        }
        let mut common = CommonResponse {
            clear_route_cache: true,
            header_mutation: Some(HeaderMutation {
                set_headers: set,
                remove_headers: vec![],
            }),
            ..Default::default()
        };
        if let Some(body) = new_body {
            if self.full_duplex() {
                self.body = body;
            } else {
                common.body_mutation = Some(BodyMutation {
                    mutation: Some(body_mutation::Mutation::Body(body)),
                });
            }
        }
        if !self.headers_answered {
            self.headers_answered = true;
            self.send_with(
                processing_response::Response::RequestHeaders(HeadersResponse {
                    response: Some(common),
                }),
                metadata,
            )
            .await?;
            if self.full_duplex() && has_body {
                self.stream_body_back(!trailers_follow).await?;
            }
        } else {
            // Buffered: the headers went on already; the pick rides on the
            // body reply, before Envoy picks a route.
            self.send_with(
                processing_response::Response::RequestBody(BodyResponse {
                    response: Some(common),
                }),
                metadata,
            )
            .await?;
        }
        Ok(())
    }

    fn headers_end_of_stream(&self) -> bool {
        self.headers.as_ref().is_some_and(|h| h.end_of_stream)
    }

    async fn stream_body_back(&mut self, end_of_stream: bool) -> Result<(), Status> {
        let body = std::mem::take(&mut self.body);
        let chunks: Vec<&[u8]> = if body.is_empty() {
            vec![&[]]
        } else {
            body.chunks(MAX_CHUNK).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            self.send(processing_response::Response::RequestBody(BodyResponse {
                response: Some(streamed(chunk.to_vec(), end_of_stream && i == last)),
            }))
            .await?;
        }
        Ok(())
    }

    fn outcome(&mut self, message: &ProcessingRequest) -> Outcome {
        let mut request = crate::scheduler::Request::default();
        if !self.body.is_empty() {
            // An OpenAI request: it must be JSON naming a model.
            let json = serde_json::from_slice::<serde_json::Value>(&self.body);
            match json.as_ref().map(|j| (j, RequestFacts::of(j))) {
                Ok((json, Some(facts))) => {
                    let choice = self.route.choose(&facts.model, &self.picker.splits);
                    // The server (and LoRA affinity) sees the served name.
                    request.model = Some(choice.served.clone());
                    if let Some(prompt) = infergate_serving::prompt::prompt_text(json) {
                        request.blocks = infergate_serving::prompt::block_hashes(&prompt);
                    }
                    self.usage_asked = facts.needs_usage_asked();
                    self.new_body = crate::request_body::prepare(
                        &self.body,
                        json,
                        choice.rewritten().then_some(choice.served.as_str()),
                        self.usage_asked,
                    );
                    self.choice = Some(choice);
                }
                Ok((_, None)) => {
                    self.picker.counters.bad_request.inc();
                    return Outcome::Refuse(400, "the request body has no \"model\" field".into());
                }
                Err(e) => {
                    self.picker.counters.bad_request.inc();
                    return Outcome::Refuse(400, format!("the request body is not JSON: {e}"));
                }
            }
        }
        let headers = self.headers.as_ref();
        let mut filter = Filter::All;
        if let Some(subset) = subset_hint(message) {
            filter = Filter::Subset(subset);
        }
        if self.picker.test_header_steering
            && let Some(value) = headers.and_then(|h| header_value(h, TEST_SELECTION_HEADER))
            && !value.trim().is_empty()
        {
            filter = Filter::TestSteering(value.split(',').map(str::to_string).collect());
        }
        match self.picker.scheduler.pick_for(&filter, &request) {
            Ok(pick) => Outcome::Picked(pick),
            Err(error) => {
                self.choice = None;
                self.picker.counters.no_endpoint.inc();
                let text = error.to_string();
                match error {
                    PickError::NoEndpoints | PickError::NoneInSubset(_) => {
                        Outcome::Refuse(503, text)
                    }
                }
            }
        }
    }

    async fn refuse(&mut self, status: u16, text: String) -> Result<(), Status> {
        self.decided = true;
        tracing::debug!(status, "refusing: {text}");
        let body = serde_json::json!({"error": {"message": text, "code": status}}).to_string();
        self.send(processing_response::Response::ImmediateResponse(
            ImmediateResponse {
                status: Some(HttpStatus {
                    code: i32::from(status),
                }),
                headers: Some(HeaderMutation {
                    set_headers: vec![header("content-type", "application/json")],
                    remove_headers: vec![],
                }),
                body: body.into_bytes(),
                details: format!("endpoint_picker_{status}"),
                ..Default::default()
            },
        ))
        .await
    }

    /// A chunk of the response body: read, changed where it must be, and
    /// sent on (in full duplex, held back while an event is not whole).
    async fn response_body(&mut self, body: HttpBody) -> Result<(), Status> {
        let end = body.end_of_stream;
        let full_duplex = self.response_mode == BodySendMode::FullDuplexStreamed;
        let reply = match self.response.as_mut() {
            None if full_duplex => Some(streamed(body.body, end)),
            None => Some(CommonResponse::default()),
            Some(reader) => {
                let out = reader.push(&body.body, end, std::time::Instant::now());
                if full_duplex {
                    (!out.is_empty() || end).then(|| streamed(out, end))
                } else if out == body.body {
                    Some(CommonResponse::default())
                } else {
                    // Streamed mode: each chunk's reply replaces that chunk.
                    Some(CommonResponse {
                        body_mutation: Some(BodyMutation {
                            mutation: Some(if out.is_empty() {
                                body_mutation::Mutation::ClearBody(true)
                            } else {
                                body_mutation::Mutation::Body(out)
                            }),
                        }),
                        ..Default::default()
                    })
                }
            }
        };
        if end {
            self.count(false);
        }
        match reply {
            Some(common) => {
                let response = BodyResponse {
                    response: (common != CommonResponse::default()).then_some(common),
                };
                self.send(processing_response::Response::ResponseBody(response))
                    .await
            }
            None => Ok(()),
        }
    }

    async fn response_headers(
        &mut self,
        message: &ProcessingRequest,
        headers: &HttpHeaders,
    ) -> Result<(), Status> {
        self.status = header_value(headers, ":status").and_then(|s| s.parse().ok());
        let mut remove = vec![];
        if let Some(choice) = &self.choice {
            let rename = choice
                .rewritten()
                .then(|| (choice.served.clone(), choice.asked.clone()));
            let reader = ResponseBody::new(
                header_value(headers, "content-type").as_deref(),
                rename,
                self.usage_asked,
            );
            if reader.changes_length() {
                remove.push("content-length".to_string());
            }
            self.response = Some(reader);
        }
        if headers.end_of_stream {
            self.count(false);
        }
        // Served by a fallback: the gateway's retry left the chosen one.
        if let (Some(chosen), Some(served)) = (
            self.chosen,
            metadata_string(message, LB_NAMESPACE, SERVED_KEY)
                .and_then(|s| s.trim().parse::<std::net::SocketAddr>().ok()),
        ) && served != chosen
        {
            tracing::debug!(%chosen, %served, "served by a fallback: avoiding the chosen endpoint for a while");
            self.picker.counters.served_elsewhere.inc();
            self.picker.scheduler.mark_failed(chosen);
        }
        let mut set = vec![];
        if self.picker.test_header_steering {
            // As the upstream conformance picker: the gateway's report, or
            // why there is none.
            let served = metadata_string(message, LB_NAMESPACE, SERVED_KEY).unwrap_or_else(|| {
                "fail: missing destination endpoint served metadata".to_string()
            });
            set.push(header(TEST_SERVED_HEADER, &served));
        }
        let response = HeadersResponse {
            response: (!set.is_empty() || !remove.is_empty()).then(|| CommonResponse {
                header_mutation: Some(HeaderMutation {
                    set_headers: set,
                    remove_headers: remove,
                }),
                ..Default::default()
            }),
        };
        self.send(processing_response::Response::ResponseHeaders(response))
            .await
    }
}

fn streamed(body: Vec<u8>, end_of_stream: bool) -> CommonResponse {
    CommonResponse {
        body_mutation: Some(BodyMutation {
            mutation: Some(body_mutation::Mutation::StreamedResponse(
                StreamedBodyResponse {
                    body,
                    end_of_stream,
                    ..Default::default()
                },
            )),
        }),
        ..Default::default()
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// A header's value; Envoy sends it in `raw_value`, older clients in `value`.
pub fn header_value(headers: &HttpHeaders, key: &str) -> Option<String> {
    headers.headers.as_ref()?.headers.iter().find_map(|h| {
        (h.key.eq_ignore_ascii_case(key)).then(|| {
            if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            }
        })
    })
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// `envoy.lb: {x-gateway-destination-endpoint: <value>}`.
fn lb_metadata(destination: &str) -> Struct {
    let inner = Struct {
        fields: [(DESTINATION_HEADER.to_string(), string_value(destination))].into(),
    };
    Struct {
        fields: [(
            LB_NAMESPACE.to_string(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]
        .into(),
    }
}

fn metadata_value<'a>(
    message: &'a ProcessingRequest,
    namespace: &str,
    key: &str,
) -> Option<&'a Value> {
    message
        .metadata_context
        .as_ref()?
        .filter_metadata
        .get(namespace)?
        .fields
        .get(key)
}

fn metadata_string(message: &ProcessingRequest, namespace: &str, key: &str) -> Option<String> {
    match &metadata_value(message, namespace, key)?.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The subset hint: a list of `ip:port` strings or one comma-separated string.
fn subset_hint(message: &ProcessingRequest) -> Option<Vec<String>> {
    match &metadata_value(message, SUBSET_NAMESPACE, SUBSET_KEY)?.kind {
        Some(Kind::StringValue(s)) => Some(s.split(',').map(|e| e.trim().to_string()).collect()),
        Some(Kind::ListValue(list)) => Some(
            list.values
                .iter()
                .filter_map(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => Some(s.trim().to_string()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}
