package web

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/mesh"
	"github.com/gradient-ci/gradient/mesh/federation"
)

// fakeMesh returns fixed answers and records trust requests.
type fakeMesh struct {
	trusted []MeshTrustRequest
}

func (m *fakeMesh) Status() mesh.Status {
	return mesh.Status{PeerID: "12D3KooWpeer", Addrs: []string{"/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWpeer"}, CachePublicKey: "a-1:key"}
}

func (m *fakeMesh) Peers() []mesh.PeerInfo {
	return []mesh.PeerInfo{{PeerID: "12D3KooWother", Org: "b"}}
}

func (m *fakeMesh) WellKnown() mesh.WellKnown {
	return mesh.WellKnown{PeerID: "12D3KooWpeer", CachePublicKey: "a-1:key"}
}

func (m *fakeMesh) Trust(_ context.Context, req MeshTrustRequest) (MeshTrustResponse, error) {
	if req.PeerID == "bad" {
		return MeshTrustResponse{}, fmt.Errorf("%w: peer_id %q is invalid", federation.ErrInvalid, req.PeerID)
	}
	m.trusted = append(m.trusted, req)
	return MeshTrustResponse{Org: req.Org, File: "/data/mesh-federation.json"}, nil
}

func (m *fakeMesh) Find(_ context.Context, storePath string) (MeshFindResult, error) {
	if !strings.HasPrefix(storePath, "/nix/store/") {
		return MeshFindResult{}, fmt.Errorf("%w: %q", narinfo.ErrInvalidStorePath, storePath)
	}
	return MeshFindResult{StorePath: storePath, Providers: []mesh.Provider{}, Building: []MeshBuilding{}}, nil
}

func TestMeshDisabled(t *testing.T) {
	ts, _, _, _ := newTestServer(t)

	for _, path := range []string{"/api/v1/mesh/status", "/api/v1/mesh/peers", "/api/v1/mesh/find?path=/nix/store/x"} {
		code, body := request(t, http.MethodGet, ts.URL+path, testToken, "")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "--mesh-listen") {
			t.Errorf("GET %s without the mesh = %d %q, want 503 naming --mesh-listen", path, code, body)
		}
	}

	if code, _ := request(t, http.MethodGet, ts.URL+mesh.WellKnownPath, "", ""); code != http.StatusNotFound {
		t.Errorf("GET %s without the mesh = %d, want 404", mesh.WellKnownPath, code)
	}
}

func TestMeshEndpoints(t *testing.T) {
	records, err := db.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { records.Close() })

	srv := New(Config{DB: records, Evaluator: &fakeEvaluator{}, Logs: dirLogs(t.TempDir()), AdminToken: testToken})
	fm := &fakeMesh{}
	srv.AddMesh(fm)
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	url := ts.URL

	code, body := request(t, http.MethodGet, url+mesh.WellKnownPath, "", "")
	var wk mesh.WellKnown
	if code != http.StatusOK || json.Unmarshal([]byte(body), &wk) != nil || wk.PeerID != "12D3KooWpeer" {
		t.Errorf("GET %s without a token = %d %q, want the peer's document", mesh.WellKnownPath, code, body)
	}

	if code, _ := request(t, http.MethodGet, url+"/api/v1/mesh/status", "", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /mesh/status without a token = %d, want 401", code)
	}

	code, body = request(t, http.MethodGet, url+"/api/v1/mesh/status", testToken, "")
	if code != http.StatusOK || !strings.Contains(body, `"cache_public_key": "a-1:key"`) {
		t.Errorf("GET /mesh/status = %d %q, want the status", code, body)
	}

	if code, body := request(t, http.MethodGet, url+"/api/v1/mesh/peers", testToken, ""); code != http.StatusOK || !strings.Contains(body, "12D3KooWother") {
		t.Errorf("GET /mesh/peers = %d %q, want the peer", code, body)
	}

	tests := []struct {
		name string
		body string
		want int
	}{
		{"valid", `{"peer_id":"12D3KooWnew","key":"n-1:key","org":"n"}`, http.StatusOK},
		{"conflict", `{"peer_id":"bad","key":"n-1:key"}`, http.StatusBadRequest},
		{"unknown field", `{"peer":"x"}`, http.StatusBadRequest},
	}
	for _, tc := range tests {
		if code, body := request(t, http.MethodPost, url+"/api/v1/mesh/trust", testToken, tc.body); code != tc.want {
			t.Errorf("POST /mesh/trust (%s) = %d %q, want %d", tc.name, code, body, tc.want)
		}
	}
	if len(fm.trusted) != 1 || fm.trusted[0].Org != "n" {
		t.Errorf("trust requests = %+v, want the valid one", fm.trusted)
	}

	if code, _ := request(t, http.MethodGet, url+"/api/v1/mesh/find?path=/nix/store/abc-x", testToken, ""); code != http.StatusOK {
		t.Errorf("GET /mesh/find = %d, want 200", code)
	}
	if code, _ := request(t, http.MethodGet, url+"/api/v1/mesh/find?path=relative", testToken, ""); code != http.StatusBadRequest {
		t.Errorf("GET /mesh/find with an invalid path = %d, want 400", code)
	}
	if code, _ := request(t, http.MethodGet, url+"/api/v1/mesh/find", testToken, ""); code != http.StatusBadRequest {
		t.Errorf("GET /mesh/find without a path = %d, want 400", code)
	}
}
