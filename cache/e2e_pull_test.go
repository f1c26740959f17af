package cache

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

// TestNixSubstitutesThroughUpstream writes a binary cache with
// nix copy --to file://DIR?compression=xz, serves DIR as static files on
// loopback as the upstream, and has the real nix client substitute the
// closure through the cache.
func TestNixSubstitutesThroughUpstream(t *testing.T) {
	env := requireNix(t)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	source := env.newStoreDir()
	top := env.build(ctx, source)

	upstreamSecret, upstreamPublic, err := narinfo.GenerateKey("file-upstream-1")
	if err != nil {
		t.Fatal(err)
	}

	keyFile := filepath.Join(env.home, "upstream.secret")
	if err := os.WriteFile(keyFile, []byte(upstreamSecret.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()

	_, stderr, err := env.run(ctx, source, "copy", "--to", "file://"+dir+"?compression=xz&secret-key="+keyFile, top)
	if err != nil {
		t.Fatalf("nix copy --to file://: %v\n%s", err, stderr)
	}

	static := httptest.NewServer(http.FileServer(http.Dir(dir)))
	t.Cleanup(static.Close)

	s := newTestStore(t, nil)
	if _, err := s.AddUpstream(ctx, Upstream{URL: static.URL, PublicKeys: []string{upstreamPublic.String()}}); err != nil {
		t.Fatal(err)
	}

	srv := startCacheServer(t, s)
	cacheURL := srv.URL + "/cache/main"

	for _, key := range []struct{ name, value string }{
		{name: "the cache's key", value: s.PublicKey()},
		{name: "the upstream's key", value: upstreamPublic.String()},
	} {
		t.Run(key.name, func(t *testing.T) {
			dest := env.newStoreDir()

			_, stderr, err := env.run(ctx, dest, "copy", "--option", "trusted-public-keys", key.value,
				"--from", cacheURL, top)
			if err != nil {
				t.Fatalf("nix copy --from the cache: %v\n%s", err, stderr)
			}

			_, stderr, err = env.run(ctx, dest, "store", "verify", "--recursive",
				"--option", "trusted-public-keys", key.value, top)
			if err != nil {
				t.Errorf("nix store verify: %v\n%s", err, stderr)
			}

			assertSameFile(t, filepath.Join(source, top), filepath.Join(dest, top))
		})
	}

	has, err := s.HasPath(ctx, top)
	if err != nil || !has {
		t.Errorf("HasPath(%q) after substitution = %v, %v, want true, nil", top, has, err)
	}

	assertEveryNarInfoHasNAR(t, s)
}
