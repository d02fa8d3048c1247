//! Prometheus metrics: one registry per service, served in the text exposition format on the
//! service's own HTTP port (`METRICS_LISTEN_ADDR`, `GET /metrics`). The kit records what every
//! service shares — gRPC calls (the names of the gRPC ecosystem's server metrics), the database
//! pool, events produced and consumed with consumer lag — and services add their own series to the
//! same registry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// The registry of one service and the series the kit records.
pub struct Metrics {
    registry: Registry,
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    pub grpc_handling_seconds: HistogramVec,
    pub db_pool_connections: IntGaugeVec,
    pub db_pool_max_connections: IntGauge,
    pub events_produced: IntCounterVec,
    pub consumer_applied: IntCounterVec,
    pub consumer_lag_seconds: GaugeVec,
    scrape_hooks: std::sync::Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

/// Latency buckets (seconds) for RPCs: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let grpc_started = IntCounterVec::new(
            Opts::new("grpc_server_started_total", "RPCs started on the server."),
            &["grpc_type", "grpc_service", "grpc_method"],
        )
        .expect("metric");
        let grpc_handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "RPCs completed on the server, by status code.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )
        .expect("metric");
        let grpc_handling_seconds = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Time from receiving an RPC to completing it.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["grpc_type", "grpc_service", "grpc_method"],
        )
        .expect("metric");
        let db_pool_connections = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Database pool connections by state."),
            &["state"],
        )
        .expect("metric");
        let db_pool_max_connections =
            IntGauge::new("db_pool_max_connections", "Database pool size limit.").expect("metric");
        let events_produced = IntCounterVec::new(
            Opts::new(
                "events_produced_total",
                "Lifecycle events written to this service's outbox.",
            ),
            &["producer", "event_type"],
        )
        .expect("metric");
        let consumer_applied = IntCounterVec::new(
            Opts::new(
                "event_consumer_events_applied_total",
                "Events applied by this service's consumers.",
            ),
            &["consumer", "source"],
        )
        .expect("metric");
        let consumer_lag_seconds = GaugeVec::new(
            Opts::new(
                "event_consumer_lag_seconds",
                "Age of the oldest event not yet applied (0 when caught up).",
            ),
            &["consumer", "source"],
        )
        .expect("metric");
        for collector in [
            Box::new(grpc_started.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(grpc_handled.clone()),
            Box::new(grpc_handling_seconds.clone()),
            Box::new(db_pool_connections.clone()),
            Box::new(db_pool_max_connections.clone()),
            Box::new(events_produced.clone()),
            Box::new(consumer_applied.clone()),
            Box::new(consumer_lag_seconds.clone()),
        ] {
            registry.register(collector).expect("unique metric");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(crate::process::ProcessCollector::for_self()))
            .expect("unique metric");
        Arc::new(Self {
            registry,
            grpc_started,
            grpc_handled,
            grpc_handling_seconds,
            db_pool_connections,
            db_pool_max_connections,
            events_produced,
            consumer_applied,
            consumer_lag_seconds,
            scrape_hooks: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Registers a service's own series.
    pub fn register<C: prometheus::core::Collector + Clone + 'static>(&self, collector: &C) {
        if let Err(error) = self.registry.register(Box::new(collector.clone())) {
            tracing::warn!(%error, "metric registered twice");
        }
    }

    /// Runs `hook` before every scrape (to refresh gauges that are cheap to read).
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.scrape_hooks.lock() {
            hooks.push(Box::new(hook));
        }
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        if let Ok(hooks) = self.scrape_hooks.lock() {
            for hook in hooks.iter() {
                hook();
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Serves `GET /metrics` on `listener` until shutdown. A deliberately small HTTP/1.1
    /// responder: one request per connection, bounded size and time.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: Shutdown) {
        loop {
            let (mut stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "metrics listener accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.wait() => return,
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                let mut request = Vec::with_capacity(512);
                let mut buf = [0u8; 1024];
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                        let n = stream.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        request.extend_from_slice(&buf[..n]);
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let line = String::from_utf8_lossy(&request);
                let first = line.lines().next().unwrap_or("");
                let (status, content_type, body) =
                    if first.starts_with("GET /metrics ") || first.starts_with("GET /metrics?") {
                        (
                            "200 OK",
                            "text/plain; version=0.0.4; charset=utf-8",
                            metrics.render(),
                        )
                    } else if first.starts_with("GET / ") {
                        (
                            "200 OK",
                            "text/plain; charset=utf-8",
                            "see /metrics\n".to_owned(),
                        )
                    } else {
                        (
                            "404 Not Found",
                            "text/plain; charset=utf-8",
                            "not found\n".to_owned(),
                        )
                    };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    }
}

/// Streaming methods, for the `grpc_type` label.
fn grpc_type(method: &str) -> &'static str {
    if method == "ServerReflectionInfo" {
        "bidi_stream"
    } else if method == "Subscribe" || method.starts_with("Watch") || method.starts_with("Stream") {
        "server_stream"
    } else {
        "unary"
    }
}

/// Tower layer that records `grpc_server_*` metrics for every call.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Records the end of one call exactly once.
struct CallRecord {
    metrics: Arc<Metrics>,
    span: tracing::Span,
    kind: &'static str,
    service: String,
    method: String,
    started: Instant,
    done: bool,
}

impl CallRecord {
    fn finish(&mut self, code: &str) {
        if self.done {
            return;
        }
        self.done = true;
        let labels = [self.kind, self.service.as_str(), self.method.as_str()];
        self.metrics
            .grpc_handled
            .with_label_values(&[labels[0], labels[1], labels[2], code])
            .inc();
        self.metrics
            .grpc_handling_seconds
            .with_label_values(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        let number = CODES.iter().position(|c| *c == code).unwrap_or(2);
        self.span.record("rpc.grpc.status_code", number);
        // Server errors per the OpenTelemetry RPC conventions.
        if matches!(
            code,
            "UNKNOWN"
                | "DEADLINE_EXCEEDED"
                | "UNIMPLEMENTED"
                | "INTERNAL"
                | "UNAVAILABLE"
                | "DATA_LOSS"
        ) {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // The client went away before a status was sent.
        self.finish("CANCELLED");
    }
}

/// gRPC status names by code number.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The canonical name of a `grpc-status` value.
pub fn code_name(status: &str) -> &'static str {
    status
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| CODES.get(n).copied())
        .unwrap_or("UNKNOWN")
}

/// Reads W3C trace context from request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The server span of one call: a child of the caller's trace when it sent `traceparent`.
/// Health checks and reflection get none (they would drown the traces).
fn server_span(service: &str, method: &str, headers: &http::HeaderMap) -> tracing::Span {
    if service.starts_with("grpc.") {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %format!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        complaint.id = tracing::field::Empty,
        case.id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    use opentelemetry::trace::TraceContextExt as _;
    if parent.span().span_context().is_valid() {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let _ = span.set_parent(parent);
    }
    crate::telemetry::record_ids(&span);
    span
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body,
{
    type Response = http::Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let service = parts.next().unwrap_or("").to_owned();
        let method = parts.next().unwrap_or("").to_owned();
        let kind = grpc_type(&method);
        self.metrics
            .grpc_started
            .with_label_values(&[kind, &service, &method])
            .inc();
        let span = server_span(&service, &method, request.headers());
        let mut record = CallRecord {
            metrics: self.metrics.clone(),
            span: span.clone(),
            kind,
            service,
            method,
            started: Instant::now(),
            done: false,
        };
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        use tracing::Instrument as _;
        Box::pin(
            async move {
                let response = future.await?;
                // Trailers-only responses (most errors) carry the status in the headers.
                if let Some(status) = response.headers().get("grpc-status") {
                    record.finish(code_name(status.to_str().unwrap_or("2")));
                }
                Ok(response.map(|inner| MetricsBody {
                    inner,
                    record: Some(record),
                }))
            }
            .instrument(span),
        )
    }
}

pin_project_lite::pin_project! {
    /// Response body that reads `grpc-status` from the trailers as they pass.
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        record: Option<CallRecord>,
    }
}

impl<B: http_body::Body> http_body::Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(record)) = (frame.trailers_ref(), this.record.as_mut())
                {
                    let code = trailers
                        .get("grpc-status")
                        .and_then(|s| s.to_str().ok())
                        .unwrap_or("0");
                    record.finish(code_name(code));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(record) = this.record.as_mut() {
                    record.finish("INTERNAL");
                }
            }
            Poll::Ready(None) => {
                if let Some(record) = this.record.as_mut() {
                    record.finish("OK");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_holds_the_shared_series() {
        let metrics = Metrics::new();
        metrics
            .grpc_handled
            .with_label_values(&[
                "unary",
                "complaints.intake.v1.IntakeService",
                "SubmitComplaint",
                "OK",
            ])
            .inc();
        metrics
            .events_produced
            .with_label_values(&["intake", "ComplaintAccepted"])
            .inc();
        let text = metrics.render();
        assert!(text.contains(
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"SubmitComplaint\",grpc_service=\"complaints.intake.v1.IntakeService\",grpc_type=\"unary\"} 1"
        ), "{text}");
        assert!(text.contains(
            "events_produced_total{event_type=\"ComplaintAccepted\",producer=\"intake\"} 1"
        ));
        assert_eq!(code_name("16"), "UNAUTHENTICATED");
        assert_eq!(grpc_type("Subscribe"), "server_stream");
    }
}
