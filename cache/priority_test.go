package cache

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

// clientAddrCase is one line of testdata/client-addr.txt.
type clientAddrCase struct {
	peer    string
	headers []string
	want    string
}

// clientAddrTrusted are the trusted proxies of every case.
var clientAddrTrusted = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}

func loadClientAddrCases(t testing.TB) []clientAddrCase {
	t.Helper()

	var cases []clientAddrCase

	for i, line := range strings.Split(string(mustReadFile(t, "testdata/client-addr.txt")), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}

		fields := strings.Split(line, " | ")
		if len(fields) != 3 {
			t.Fatalf("testdata/client-addr.txt:%d: %d fields, want 3", i+1, len(fields))
		}

		c := clientAddrCase{peer: fields[0], want: fields[2]}
		if c.peer == "-" {
			c.peer = ""
		}

		if fields[1] != "-" {
			c.headers = strings.Split(fields[1], ";")
		}

		cases = append(cases, c)
	}

	return cases
}

func clientAddrRequest(peer string, headers []string) *http.Request {
	req := &http.Request{RemoteAddr: peer, Header: http.Header{}}
	for _, header := range headers {
		req.Header.Add("X-Forwarded-For", header)
	}

	return req
}

func TestClientAddr(t *testing.T) {
	for _, c := range loadClientAddrCases(t) {
		got := clientAddr(clientAddrRequest(c.peer, c.headers), clientAddrTrusted)

		want := c.want
		if want == "invalid" {
			want = netip.Addr{}.String()
		}

		if got.String() != want {
			t.Errorf("clientAddr(%q, X-Forwarded-For %q) = %s, want %s", c.peer, c.headers, got, want)
		}
	}
}

// FuzzClientAddr checks that clientAddr returns the peer unless the peer
// is a trusted proxy, and otherwise an address taken from the last
// maxForwardedHops entries of X-Forwarded-For.
func FuzzClientAddr(f *testing.F) {
	for _, c := range loadClientAddrCases(f) {
		f.Add(c.peer, strings.Join(c.headers, ";"))
	}

	f.Fuzz(func(t *testing.T, peer, joined string) {
		var headers []string
		if joined != "" {
			headers = strings.Split(joined, ";")
		}

		got := clientAddr(clientAddrRequest(peer, headers), clientAddrTrusted)

		host := peer
		if h, _, err := net.SplitHostPort(peer); err == nil {
			host = h
		}

		peerAddr, err := netip.ParseAddr(host)
		if err != nil {
			if got.IsValid() {
				t.Errorf("clientAddr(peer %q) = %s, want the invalid address for a peer that does not parse", peer, got)
			}

			return
		}

		peerAddr = peerAddr.Unmap()

		if !contains(clientAddrTrusted, peerAddr) {
			if got != peerAddr {
				t.Errorf("clientAddr(untrusted peer %q) = %s, want the peer", peer, got)
			}

			return
		}

		if got == peerAddr {
			return
		}

		var hops []string
		for _, header := range headers {
			hops = append(hops, strings.Split(header, ",")...)
		}

		start := max(0, len(hops)-maxForwardedHops)
		for _, hop := range hops[start:] {
			if addr, err := netip.ParseAddr(strings.TrimSpace(hop)); err == nil && addr.Unmap() == got {
				return
			}
		}

		t.Errorf("clientAddr(%q, X-Forwarded-For %q) = %s, which is neither the peer nor one of the last %d entries", peer, headers, got, maxForwardedHops)
	})
}
