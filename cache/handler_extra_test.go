package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

func TestHandlerNarInfoJSON(t *testing.T) {
	s, srv := newPullStore(t, newFakeUpstream(t), nil)
	narBytes := makeNAR(t, []byte("json\n"))
	info := pathInfoFor(pullHashA, "json", narBytes)

	if err := s.PutNAR(context.Background(), info, bytes.NewReader(narBytes)); err != nil {
		t.Fatal(err)
	}

	resp, body := get(t, srv.URL+"/"+pullHashA+".narinfo?json")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET narinfo?json = %d %q, want 200 application/json", resp.StatusCode, resp.Header.Get("Content-Type"))
	}

	var got narInfoJSON
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("decode narinfo?json %q: %v", body, err)
	}

	if got.Path != info.StorePath || got.NarHash != info.NarHash || got.NarSize != info.NarSize || len(got.Signatures) != 1 {
		t.Errorf("narinfo?json = %+v, want path %s, NarHash %s, NarSize %d and one signature", got, info.StorePath, info.NarHash, info.NarSize)
	}
}

func TestHandlerStoresRealisations(t *testing.T) {
	_, srv := newPullStore(t, newFakeUpstream(t), nil)

	for _, name := range []string{
		"realisations/sha256:" + strings.Repeat("a", 64) + "!out.doi",
		"build-trace-v2/" + pullHashA + "-hello.drv/out.json",
	} {
		realisation := `{"id":"x","outPath":"` + pullHashB + `-hello","signatures":[]}`

		resp, text := put(t, srv.URL+"/"+name, []byte(realisation))
		if resp.StatusCode != http.StatusOK {
			t.Errorf("PUT %s = %d %q, want 200", name, resp.StatusCode, text)
			continue
		}

		resp, body := get(t, srv.URL+"/"+name)
		if resp.StatusCode != http.StatusOK || string(body) != realisation {
			t.Errorf("GET %s = %d %q, want 200 %q", name, resp.StatusCode, body, realisation)
		}
	}

	resp, _ := put(t, srv.URL+"/realisations/x!out.doi", []byte("not json"))
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("PUT realisation that is not JSON = %d, want 400", resp.StatusCode)
	}

	resp, _ = get(t, srv.URL+"/realisations/unknown!out.doi")
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET unknown realisation = %d, want 404", resp.StatusCode)
	}
}
