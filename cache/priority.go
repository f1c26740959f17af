package cache

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// maxForwardedHops bounds the X-Forwarded-For entries that clientAddr
// reads, because the header comes from the client.
const maxForwardedHops = 32

// clientAddr returns the address of the client that sent r. The peer
// address is the client unless it is one of trusted. Then the
// X-Forwarded-For entries are read from the right, skipping trusted
// proxies, and the first other address is the client. It returns an
// invalid address when the peer address does not parse.
func clientAddr(r *http.Request, trusted []netip.Prefix) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}

	addr, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}

	addr = addr.Unmap()

	if !contains(trusted, addr) {
		return addr
	}

	var hops []string
	for _, header := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(header, ",")...)
	}

	for i, checked := len(hops)-1, 0; i >= 0 && checked < maxForwardedHops; i, checked = i-1, checked+1 {
		hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			// An entry that is not an address ends what can be believed.
			return addr
		}

		addr = hop.Unmap()
		if !contains(trusted, addr) {
			return addr
		}
	}

	return addr
}

func contains(prefixes []netip.Prefix, addr netip.Addr) bool {
	for _, prefix := range prefixes {
		if prefix.Contains(addr) {
			return true
		}
	}

	return false
}

// priorityFor returns the nix-cache-info priority for a client address:
// the LAN priority inside a LAN CIDR, the general one elsewhere.
func (c *compiledSettings) priorityFor(addr netip.Addr) int {
	if c.LANPriority > 0 && addr.IsValid() && contains(c.lanCIDRs, addr) {
		return c.LANPriority
	}

	return c.Priority
}
