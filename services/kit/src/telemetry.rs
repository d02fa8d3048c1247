//! Logs and traces, set up once per process.
//!
//! Logs: `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` writes one JSON object per line,
//! with the fields of the current spans (including `trace_id`) for log collectors.
//!
//! Traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are exported over OTLP/gRPC under
//! `OTEL_SERVICE_NAME` (default: the binary's name); unset, nothing is exported. W3C trace
//! context travels in gRPC metadata (`traceparent`) and inside every event, so a complaint's
//! lifecycle is one trace across the five services. Spans carry ids, never personal data.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes and stops trace export when dropped (at the end of `main`).
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("trace export did not shut down cleanly: {error}");
        }
    }
}

/// Sets up logging and, when configured, OTLP trace export. Call inside the Tokio runtime.
pub fn init(default_service_name: &str) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = crate::config::optional("LOG_FORMAT").as_deref() == Some("json");
    let service_name = crate::config::optional("OTEL_SERVICE_NAME")
        .unwrap_or_else(|| default_service_name.to_owned());
    let provider = crate::config::optional("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|endpoint| {
        match otlp_provider(&endpoint, &service_name) {
            Ok(provider) => Some(provider),
            Err(error) => {
                eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: traces disabled: {error}");
                None
            }
        }
    });
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name.clone())));
    let (text, json_layer) = if json {
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_target(false);
        (None, Some(layer))
    } else {
        (
            Some(tracing_subscriber::fmt::layer().with_target(false)),
            None,
        )
    };
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json_layer)
        .with(otel_layer)
        .try_init();
    if result.is_ok() {
        tracing::info!(service = %service_name, traces = provider.is_some(), "telemetry initialised");
    }
    TelemetryGuard { provider }
}

fn otlp_provider(
    endpoint: &str,
    service_name: &str,
) -> Result<SdkTracerProvider, Box<dyn std::error::Error>> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build())
}

/// The W3C `traceparent` of the current span, or "" when there is no trace.
pub fn current_traceparent() -> String {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// The trace context a `traceparent` names (empty context when absent or malformed).
pub fn context_from_traceparent(traceparent: &str) -> opentelemetry::Context {
    let mut carrier = HashMap::new();
    if !traceparent.is_empty() {
        carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` a child of the trace `traceparent` names (no-op without one).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let context = context_from_traceparent(traceparent);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Links the current span to the trace `traceparent` names (e.g. an agent's call to the
/// complaint it changes), so the two traces can be followed from each other.
pub fn link_current_to(traceparent: &str) {
    let context = context_from_traceparent(traceparent);
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        tracing::Span::current().add_link(span_context);
    }
}

/// The trace id of a span, for logs (empty without tracing).
pub fn trace_id(span: &tracing::Span) -> String {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span_context.trace_id().to_string()
    } else {
        String::new()
    }
}

/// Records the span's OpenTelemetry trace and span ids on its `trace_id` / `span_id` fields, so
/// JSON logs written inside it carry them.
pub fn record_ids(span: &tracing::Span) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string().as_str());
        span.record("span_id", span_context.span_id().to_string().as_str());
    }
}

/// Records the complaint a request or event is about on the current span.
pub fn record_complaint(id: &str) {
    tracing::Span::current().record("complaint.id", id);
}

/// Records the case a request or event is about on the current span.
pub fn record_case(id: &str) {
    tracing::Span::current().record("case.id", id);
}

/// Masks personal data for logs: keeps the first and last character only.
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    match chars.len() {
        0 => String::new(),
        1 | 2 => "*".repeat(chars.len()),
        n => format!("{}{}{}", chars[0], "*".repeat(n - 2), chars[n - 1]),
    }
}

/// Log lines kept in memory, for tests that check what a service logs (a `MakeWriter` for
/// `tracing_subscriber`'s fmt layer).
#[cfg(any(test, feature = "testing"))]
#[derive(Clone, Default)]
pub struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(any(test, feature = "testing"))]
impl CapturedLog {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

#[cfg(any(test, feature = "testing"))]
impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(any(test, feature = "testing"))]
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;

    fn make_writer(&'a self) -> CapturedLog {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mask_hides_the_middle() {
        assert_eq!(super::mask("+8613800138000"), "+************0");
        assert_eq!(super::mask("张三"), "**");
        assert_eq!(super::mask(""), "");
    }

    #[test]
    fn json_logs_carry_the_trace_and_span_ids() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let log = super::CapturedLog::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(log.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "grpc.server",
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty
            );
            super::record_ids(&span);
            let _entered = span.enter();
            tracing::info!(case_id = "c-1", "case opened");
        });
        let text = log.text();
        let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let trace_id = line["span"]["trace_id"].as_str().unwrap_or_default();
        let span_id = line["span"]["span_id"].as_str().unwrap_or_default();
        assert_eq!(trace_id.len(), 32, "{text}");
        assert_eq!(span_id.len(), 16, "{text}");
        assert_eq!(line["message"], "case opened");
    }

    #[test]
    fn traceparents_round_trip() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = super::context_from_traceparent(tp);
        use opentelemetry::trace::TraceContextExt;
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(
            !super::context_from_traceparent("garbage")
                .span()
                .span_context()
                .is_valid()
        );
    }
}
