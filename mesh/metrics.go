package mesh

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Fetch results counted by gradient_mesh_fetches_total.
const (
	fetchFetched  = "fetched"   // a peer served the path and it was verified
	fetchNotFound = "not_found" // no peer provides the path
	fetchBadData  = "bad_data"  // a peer served data that failed verification
	fetchError    = "error"     // a peer or the local sink failed
)

// metrics are the Prometheus collectors of one Node.
type metrics struct {
	fetches       *prometheus.CounterVec
	announced     prometheus.Counter
	announceFails prometheus.Counter
	rejectedConns prometheus.Counter
	collectors    []prometheus.Collector
}

func newMetrics(n *Node) *metrics {
	m := &metrics{
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gradient_mesh_fetches_total",
			Help: "Attempts to fetch a store path from a mesh peer, by result (fetched, not_found, bad_data, error).",
		}, []string{"result"}),
		announced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gradient_mesh_announcements_total",
			Help: "Provider records published for store paths of the local cache.",
		}),
		announceFails: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gradient_mesh_announce_failures_total",
			Help: "Provider records that failed to publish and will be retried.",
		}),
		rejectedConns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gradient_mesh_rejected_connections_total",
			Help: "Connections rejected because the peer is not a federation member.",
		}),
	}

	overdue := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gradient_mesh_announce_overdue",
		Help: "Store paths whose provider record has expired or was never published in time; above zero means announcing falls behind.",
	}, func() float64 { return float64(n.Stats().Overdue) })

	paths := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gradient_mesh_announce_paths",
		Help: "Store paths the node announces.",
	}, func() float64 { return float64(n.Stats().Paths) })

	builds := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gradient_mesh_peer_builds",
		Help: "Builds in progress that peers announced.",
	}, func() float64 { return float64(n.Stats().PeerBuilds) })

	m.collectors = []prometheus.Collector{m.fetches, m.announced, m.announceFails, m.rejectedConns, overdue, paths, builds}

	return m
}

// Collectors returns the node's Prometheus collectors for the caller to
// register. Their names start with gradient_mesh_.
func (n *Node) Collectors() []prometheus.Collector {
	return n.metrics.collectors
}

// Stats are counts of the node's bookkeeping.
type Stats struct {
	// Paths is the number of store paths the node announces.
	Paths int `json:"paths"`
	// AnnouncesInFlight is the number of provider records being
	// published now.
	AnnouncesInFlight int `json:"announces_in_flight"`
	// Overdue is the number of paths whose provider record expired or
	// was not published in time.
	Overdue int `json:"overdue"`
	// Announced is the number of provider records published since the
	// node started.
	Announced int64 `json:"announced"`
	// PeerBuilds is the number of builds in progress that peers
	// announced.
	PeerBuilds int `json:"peer_builds"`
	// OwnBuilds is the number of local builds announced with StartBuild.
	OwnBuilds int `json:"own_builds"`
	// BlockedPeers is the number of peers that served bad data and are
	// still blocked or not yet forgotten.
	BlockedPeers int `json:"blocked_peers"`
}

// Stats returns the current counts. Overdue takes time linear in Paths.
func (n *Node) Stats() Stats {
	now := n.cfg.Now()

	n.mu.Lock()
	defer n.mu.Unlock()

	return Stats{
		Paths:             n.schedule.Len(),
		AnnouncesInFlight: n.schedule.InFlight(),
		Overdue:           n.schedule.Overdue(now),
		Announced:         n.announced.Load(),
		PeerBuilds:        n.board.Len(),
		OwnBuilds:         len(n.ownBuilds),
		BlockedPeers:      n.blocklist.Len(),
	}
}
