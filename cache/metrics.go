package cache

import (
	"fmt"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Request results counted by gradient_cache_requests_total.
const (
	resultHit    = "hit"    // served from the cache's own files
	resultPeer   = "peer"   // fetched from a peer (see SetPeers) for this request
	resultPulled = "pulled" // fetched from an upstream for this request
	resultMiss   = "miss"   // no upstream holds it
	resultError  = "error"  // an upstream fault or a local error
)

// metrics are the Prometheus collectors of one Store. Every series has
// the label cache="<name>".
type metrics struct {
	requests        *prometheus.CounterVec
	upstreamLatency *prometheus.HistogramVec
	upstreamErrors  *prometheus.CounterVec
	servedBytes     *prometheus.CounterVec
	evictions       prometheus.Counter
	evictedBytes    prometheus.Counter
	inflight        *prometheus.GaugeVec
	collectors      []prometheus.Collector
}

func newMetrics(cacheName string) *metrics {
	labels := prometheus.Labels{"cache": cacheName}

	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "gradient_cache_requests_total",
			Help:        "Binary cache reads by kind (narinfo, nar) and result (hit, peer, pulled, miss, error).",
			ConstLabels: labels,
		}, []string{"kind", "result"}),
		upstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:        "gradient_cache_upstream_request_duration_seconds",
			Help:        "Time until an upstream answered a narinfo request (kind narinfo) or a NAR HEAD request (nar_head), or a NAR download ended (nar).",
			ConstLabels: labels,
			Buckets:     []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 15, 60, 300},
		}, []string{"upstream", "kind"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "gradient_cache_upstream_errors_total",
			Help:        "Failed upstream requests by reason (timeout, skipped, invalid, transport, mismatch).",
			ConstLabels: labels,
		}, []string{"upstream", "reason"}),
		servedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "gradient_cache_served_bytes_total",
			Help:        "Bytes of NAR files sent to clients, by source (local, upstream).",
			ConstLabels: labels,
		}, []string{"source"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "gradient_cache_evictions_total",
			Help:        "Store paths removed by garbage collection.",
			ConstLabels: labels,
		}),
		evictedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "gradient_cache_evicted_bytes_total",
			Help:        "Bytes of NAR files removed by garbage collection.",
			ConstLabels: labels,
		}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name:        "gradient_cache_upstream_inflight_fetches",
			Help:        "Upstream fetches running now, by kind (narinfo, nar).",
			ConstLabels: labels,
		}, []string{"kind"}),
	}

	m.collectors = []prometheus.Collector{m.requests, m.upstreamLatency, m.upstreamErrors, m.servedBytes, m.evictions, m.evictedBytes, m.inflight}

	return m
}

// Describe implements prometheus.Collector, so the node can register the
// Store with its registry and serve it at /metrics.
func (s *Store) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range s.metrics.collectors {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (s *Store) Collect(ch chan<- prometheus.Metric) {
	for _, c := range s.metrics.collectors {
		c.Collect(ch)
	}
}

var _ prometheus.Collector = (*Store)(nil)

// StatsRow is one series of the cache's metrics. A histogram gives two
// rows, "<name>_count" and "<name>_sum".
type StatsRow struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	Value  float64           `json:"value"`
}

// Stats returns the current values of the metrics that Collect exports,
// without the cache label, sorted by name and labels.
func (s *Store) Stats() ([]StatsRow, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(s); err != nil {
		return nil, fmt.Errorf("gather metrics of cache %q: %w", s.cfg.Name, err)
	}

	families, err := reg.Gather()
	if err != nil {
		return nil, fmt.Errorf("gather metrics of cache %q: %w", s.cfg.Name, err)
	}

	var rows []StatsRow

	for _, family := range families {
		for _, m := range family.GetMetric() {
			labels := map[string]string{}

			for _, pair := range m.GetLabel() {
				if pair.GetName() != "cache" {
					labels[pair.GetName()] = pair.GetValue()
				}
			}

			rows = append(rows, metricRows(family.GetName(), labels, m)...)
		}
	}

	slices.SortFunc(rows, func(a, b StatsRow) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}

		return strings.Compare(fmt.Sprint(a.Labels), fmt.Sprint(b.Labels))
	})

	return rows, nil
}

func metricRows(name string, labels map[string]string, m *dto.Metric) []StatsRow {
	switch {
	case m.Counter != nil:
		return []StatsRow{{Name: name, Labels: labels, Value: m.Counter.GetValue()}}
	case m.Gauge != nil:
		return []StatsRow{{Name: name, Labels: labels, Value: m.Gauge.GetValue()}}
	case m.Histogram != nil:
		return []StatsRow{
			{Name: name + "_count", Labels: labels, Value: float64(m.Histogram.GetSampleCount())},
			{Name: name + "_sum", Labels: labels, Value: m.Histogram.GetSampleSum()},
		}
	default:
		return nil
	}
}
