package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkCacheHTTP measures the cache's handler over loopback HTTP and,
// in the same run, nginx serving the same narinfo and NAR files from disk
// as static files. nginx is looked up on PATH and in /usr/sbin; without
// it the nginx sub-benchmarks are skipped. Run it with make bench-cache.
//
// NOTE: the load generator runs in the benchmark process, so on a small
// machine it takes CPU from whichever server is measured. The cache is
// measured without the node's router and request logging.
func BenchmarkCacheHTTP(b *testing.B) {
	env := newBenchEnv(b)

	targets := []struct {
		name string
		base string
	}{
		{name: "gradient", base: env.cache.URL},
		{name: "nginx", base: env.nginxURL},
	}

	cases := []struct {
		name string
		path func(i int64) string
		size int64
	}{
		{name: "narinfo-local-hit", path: func(i int64) string { return "/" + env.local[i%int64(len(env.local))] + ".narinfo" }},
		{name: "narinfo-pulled-hit", path: func(i int64) string { return "/" + env.pulled[i%int64(len(env.pulled))] + ".narinfo" }},
		{name: "narinfo-miss", path: func(i int64) string { return "/" + missHash(i) + ".narinfo" }},
		{name: "nar-64MiB", path: func(int64) string { return "/" + env.bigNAR }, size: env.bigSize},
	}

	for _, c := range cases {
		for _, target := range targets {
			b.Run(c.name+"/"+target.name, func(b *testing.B) {
				if target.base == "" {
					b.Skip("nginx not found")
				}

				runLoad(b, target.base, c.path, c.size)
			})
		}
	}
}

// missHash returns a distinct hash part that no cache holds.
func missHash(i int64) string {
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

	var buf [32]byte
	for j := range buf {
		buf[j] = alphabet[(i>>(5*(j%12)))&31]
	}

	buf[31] = 'z'
	buf[30] = 'z'

	return string(buf[:])
}

func runLoad(b *testing.B, base string, path func(int64) string, size int64) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	defer client.CloseIdleConnections()

	var counter atomic.Int64

	if size > 0 {
		b.SetBytes(size)
	}

	b.SetParallelism(4)
	b.ResetTimer()

	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := counter.Add(1)

			resp, err := client.Get(base + path(i))
			if err != nil {
				b.Error(err)
				return
			}

			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()

			if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
				b.Errorf("GET %s = %d", path(i), resp.StatusCode)
				return
			}
		}
	})

	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

type benchEnv struct {
	cache    *httptest.Server
	nginxURL string
	local    []string
	pulled   []string
	bigNAR   string
	bigSize  int64
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()

	u := newFakeUpstream(b)
	s := newTestStore(b, func(cfg *Config) { cfg.NegativeTTL = -1 })

	if _, err := s.AddUpstream(context.Background(), Upstream{URL: u.srv.URL, PublicKeys: []string{u.public}}); err != nil {
		b.Fatal(err)
	}

	env := &benchEnv{cache: httptest.NewServer(s.Handler(HandlerOptions{}))}
	b.Cleanup(env.cache.Close)

	for i := range 100 {
		hashPart := hashFor(i)
		narBytes := makeNAR(b, bytes.Repeat([]byte{byte(i)}, 1024))

		if err := s.PutNAR(context.Background(), pathInfoFor(hashPart, "local", narBytes), bytes.NewReader(narBytes)); err != nil {
			b.Fatal(err)
		}

		env.local = append(env.local, hashPart)
	}

	for i := range 100 {
		hashPart := hashFor(200 + i)
		u.addPath(hashPart, "pulled", bytes.Repeat([]byte{byte(i)}, 1024))

		if status, _, err := fetch(context.Background(), env.cache.URL+"/"+hashPart+".narinfo"); err != nil || status != http.StatusOK {
			b.Fatalf("pull %s = %d, %v", hashPart, status, err)
		}

		env.pulled = append(env.pulled, hashPart)
	}

	big := make([]byte, 64<<20)
	rand.Read(big)

	bigNAR := makeNAR(b, big)
	bigInfo := pathInfoFor(hashFor(400), "big", bigNAR)

	if err := s.PutNAR(context.Background(), bigInfo, bytes.NewReader(bigNAR)); err != nil {
		b.Fatal(err)
	}

	info, err := s.NarInfo(context.Background(), hashFor(400))
	if err != nil {
		b.Fatal(err)
	}

	env.bigNAR = info.URL
	env.bigSize = int64(info.FileSize)
	env.nginxURL = startNginx(b, s, append(append([]string{hashFor(400)}, env.local...), env.pulled...))

	return env
}

// startNginx writes the narinfos of hashParts to a directory beside the
// cache's nar directory and serves both with nginx on a loopback port.
// It returns the base URL, or "" when nginx is not installed.
func startNginx(b *testing.B, s *Store, hashParts []string) string {
	b.Helper()

	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin = "/usr/sbin/nginx"
		if _, err := os.Stat(bin); err != nil {
			return ""
		}
	}

	root := b.TempDir()
	if err := os.Symlink(s.narDir, filepath.Join(root, "nar")); err != nil {
		b.Fatal(err)
	}

	for _, hashPart := range hashParts {
		data, err := s.narInfoBytes(context.Background(), hashPart)
		if err != nil {
			b.Fatal(err)
		}

		if err := os.WriteFile(filepath.Join(root, hashPart+".narinfo"), data, 0o644); err != nil {
			b.Fatal(err)
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}

	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()

	conf := filepath.Join(b.TempDir(), "nginx.conf")
	confText := fmt.Sprintf(`daemon off;
master_process on;
%[4]s
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  types { text/x-nix-narinfo narinfo; }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:%[2]d;
    root %[3]s;
    disable_symlinks off;
  }
}
`, b.TempDir(), port, root, userDirective())

	if err := os.WriteFile(conf, []byte(confText), 0o644); err != nil {
		b.Fatal(err)
	}

	cmd := exec.Command(bin, "-c", conf, "-e", "stderr")
	cmd.Stderr = os.Stderr

	if err := cmd.Start(); err != nil {
		b.Fatalf("start nginx: %v", err)
	}

	b.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})

	base := "http://127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(10 * time.Second)

	for {
		if status, _, err := fetch(context.Background(), base+"/"+hashParts[0]+".narinfo"); err == nil && status == http.StatusOK {
			return base
		}

		if time.Now().After(deadline) {
			b.Fatal("nginx did not answer within 10 s")
		}

		time.Sleep(20 * time.Millisecond)
	}
}

// userDirective keeps nginx's workers as root when the benchmark runs as
// root, because they must read the benchmark's private temporary
// directories.
func userDirective() string {
	if os.Geteuid() == 0 {
		return "user root;"
	}

	return ""
}
