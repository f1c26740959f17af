package client

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/web"
)

const cacheTestToken = "cache-test-token"

// Fixed key pair of the test cache; it signs nothing outside tests.
const cacheTestSecretKey = "test-cache-1:ok8oYRQOpYtxCicD/Ocb6fPoRNtTCcSBQxC+gQKfcYT665yCKXpi3SBMprbZFm7QCMHmZYAfLT0DR6HjHZPKsw=="

func newCacheTestClient(t *testing.T) *Client {
	t.Helper()

	records, err := db.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { records.Close() })

	store, err := cache.New(records.Badger(), cache.Config{Dir: t.TempDir(), SecretKey: cacheTestSecretKey, NoDefaultUpstream: true}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })

	srv := web.New(web.Config{DB: records, AdminToken: cacheTestToken})
	srv.AddCache(web.Cache{Name: "main", PublicKey: store.PublicKey(), Handler: store.Handler(cache.HandlerOptions{}), Admin: store})

	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)

	cl, err := New(ts.URL, cacheTestToken)
	if err != nil {
		t.Fatal(err)
	}

	return cl
}

func TestCacheSettingsRoundTrip(t *testing.T) {
	cl := newCacheTestClient(t)
	ctx := context.Background()

	ups, err := cl.AddUpstream(ctx, "main", cache.Upstream{URL: "http://127.0.0.1:9/", PublicKeys: []string{cache.DefaultUpstreamKey}, Priority: 20})
	if err != nil || len(ups) != 1 || ups[0].URL != "http://127.0.0.1:9" || ups[0].Priority != 20 {
		t.Fatalf("AddUpstream = %+v, %v, want one upstream http://127.0.0.1:9 with priority 20", ups, err)
	}

	if _, err := cl.AddUpstream(ctx, "main", cache.Upstream{URL: "http://127.0.0.1:9", PublicKeys: []string{"not-a-key"}}); err == nil {
		t.Error("AddUpstream(invalid key) = nil error, want 400")
	}

	priority, lan := 50, 10
	cidrs := []string{"192.168.0.0/16", "fd00::/8"}

	settings, err := cl.UpdateCacheSettings(ctx, "main", cache.SettingsUpdate{Priority: &priority, LANPriority: &lan, LANCIDRs: &cidrs})
	if err != nil || settings.Priority != 50 || settings.LANPriority != 10 || len(settings.LANCIDRs) != 2 {
		t.Errorf("UpdateCacheSettings = %+v, %v, want priority 50, LAN priority 10 and two CIDRs", settings, err)
	}

	bad := []string{"192.168.0.0"}
	if _, err := cl.UpdateCacheSettings(ctx, "main", cache.SettingsUpdate{LANCIDRs: &bad}); err == nil {
		t.Error("UpdateCacheSettings(CIDR without length) = nil error, want 400")
	}

	if _, err := cl.RemoveUpstream(ctx, "main", "http://127.0.0.1:10"); !IsNotFound(err) {
		t.Errorf("RemoveUpstream(unknown) error = %v, want 404", err)
	}

	ups, err = cl.RemoveUpstream(ctx, "main", "http://127.0.0.1:9")
	if err != nil || len(ups) != 0 {
		t.Errorf("RemoveUpstream = %+v, %v, want no upstreams", ups, err)
	}

	report, err := cl.CollectGarbage(ctx, "main", cache.GCOptions{DryRun: true})
	if err != nil || !report.DryRun || len(report.Evicted) != 0 {
		t.Errorf("CollectGarbage(dry run) = %+v, %v, want a dry run that evicts nothing", report, err)
	}

	rows, err := cl.CacheStats(ctx, "main")
	if err != nil || len(rows) == 0 {
		t.Errorf("CacheStats = %d rows, %v, want some rows", len(rows), err)
	}

	if _, err := cl.CacheSettings(ctx, "other"); !IsNotFound(err) {
		t.Errorf("CacheSettings(unknown cache) error = %v, want 404", err)
	}
}
