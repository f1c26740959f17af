// Package candidate orders the peers that provide a store path, nearest
// first, and keeps the peers that served bad data out of the list for a
// while.
//
// It is deterministic: it starts no goroutines and reads no clock.
package candidate

import (
	"cmp"
	"slices"
	"time"
)

// Candidate is a peer that provides a store path.
type Candidate struct {
	// Peer is the peer ID, as a string.
	Peer string
	// LAN is true when the peer has an address on a loopback, link-local
	// or private network, which the caller takes as the same site.
	LAN bool
	// RTT is the measured round-trip time, zero when not measured yet.
	RTT time.Duration
}

// Order sorts candidates in place, nearest first: LAN peers before the
// others, then by measured RTT, peers without a measurement after those
// with one, and by peer ID among equals so the order is deterministic.
func Order(candidates []Candidate) {
	slices.SortFunc(candidates, compare)
}

func compare(a, b Candidate) int {
	if a.LAN != b.LAN {
		if a.LAN {
			return -1
		}
		return 1
	}

	if (a.RTT == 0) != (b.RTT == 0) {
		if a.RTT == 0 {
			return 1
		}
		return -1
	}

	return cmp.Or(cmp.Compare(a.RTT, b.RTT), cmp.Compare(a.Peer, b.Peer))
}

// DefaultBlockDuration is how long Blocklist keeps a peer out when its
// duration is zero.
const DefaultBlockDuration = time.Hour

// Blocklist holds the peers that served bad data, each until a time. The
// zero value is ready to use and blocks for DefaultBlockDuration. It is
// not safe for concurrent use.
type Blocklist struct {
	// Duration is how long Block keeps a peer out.
	Duration time.Duration

	until map[string]time.Time
}

// Block keeps peer out of Filter's results from now until now plus
// Duration. Blocking a blocked peer again extends its time.
func (b *Blocklist) Block(peer string, now time.Time) {
	if b.until == nil {
		b.until = map[string]time.Time{}
	}

	d := b.Duration
	if d == 0 {
		d = DefaultBlockDuration
	}

	b.until[peer] = now.Add(d)
}

// Blocked reports whether peer is blocked at now, and forgets it when its
// time is over.
func (b *Blocklist) Blocked(peer string, now time.Time) bool {
	until, ok := b.until[peer]
	if !ok {
		return false
	}

	if now.Before(until) {
		return true
	}

	delete(b.until, peer)

	return false
}

// Filter removes the blocked peers from candidates, in place, and returns
// the shortened slice.
func (b *Blocklist) Filter(candidates []Candidate, now time.Time) []Candidate {
	return slices.DeleteFunc(candidates, func(c Candidate) bool { return b.Blocked(c.Peer, now) })
}

// Unblock lifts the block of peer, if any.
func (b *Blocklist) Unblock(peer string) {
	delete(b.until, peer)
}

// Len returns the number of peers blocked or waiting to be forgotten.
func (b *Blocklist) Len() int { return len(b.until) }
