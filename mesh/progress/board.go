// Package progress tracks which mesh peers are building which derivations,
// from the announcements they send, so a node can wait for a peer's build
// instead of building the same derivation itself.
//
// Board is deterministic: it starts no goroutines and reads no clock. The
// caller passes the time to every method.
package progress

import (
	"cmp"
	"slices"
	"time"
)

// Build is one derivation that one peer announced it is building.
type Build struct {
	// DrvPath is the store path of the derivation.
	DrvPath string
	// Peer is the peer ID of the node building it, as a string.
	Peer string
	// ETA is when the peer expects the build to finish.
	ETA time.Time
	// Expires is when the announcement lapses unless the peer refreshes
	// it. A peer that vanishes stops refreshing.
	Expires time.Time
}

// Outcome is the way a build ended.
type Outcome string

const (
	// Built means the peer built the derivation and announced its
	// outputs.
	Built Outcome = "built"
	// Failed means the build failed on the peer.
	Failed Outcome = "failed"
	// Cancelled means the peer stopped building without a result.
	Cancelled Outcome = "cancelled"
	// Expired means the announcement lapsed without an end, such as when
	// the peer vanished.
	Expired Outcome = "expired"
	// Gone means the caller reported the peer as disconnected.
	Gone Outcome = "gone"
)

// Ended is a build that the Board forgot, with the reason.
type Ended struct {
	Build
	Outcome Outcome
}

type key struct {
	drvPath string
	peer    string
}

// Board holds the builds in progress on peers. It is not safe for
// concurrent use.
type Board struct {
	builds map[key]Build
	// byDrv lists the peers building each derivation.
	byDrv map[string][]string
}

// NewBoard returns an empty Board.
func NewBoard() *Board {
	return &Board{builds: map[key]Build{}, byDrv: map[string][]string{}}
}

// Len returns the number of builds.
func (b *Board) Len() int { return len(b.builds) }

// Start records or refreshes b. It returns true when the peer was not
// known to build the derivation before, so the caller tells its scheduler
// once. An announcement that has already expired at now is ignored.
func (b *Board) Start(build Build, now time.Time) bool {
	if !build.Expires.After(now) {
		return false
	}

	k := key{build.DrvPath, build.Peer}
	_, known := b.builds[k]
	b.builds[k] = build

	if !known {
		b.byDrv[build.DrvPath] = append(b.byDrv[build.DrvPath], build.Peer)
	}

	return !known
}

// End forgets the build of drvPath on peer and returns it with outcome,
// or false when the Board does not hold it.
func (b *Board) End(peer, drvPath string, outcome Outcome) (Ended, bool) {
	k := key{drvPath, peer}

	build, ok := b.builds[k]
	if !ok {
		return Ended{}, false
	}

	b.remove(k)

	return Ended{Build: build, Outcome: outcome}, true
}

func (b *Board) remove(k key) {
	delete(b.builds, k)

	peers := slices.DeleteFunc(b.byDrv[k.drvPath], func(p string) bool { return p == k.peer })
	if len(peers) == 0 {
		delete(b.byDrv, k.drvPath)
		return
	}

	b.byDrv[k.drvPath] = peers
}

// PeerGone forgets every build of peer and returns them with the outcome
// Gone, sorted by derivation.
func (b *Board) PeerGone(peer string) []Ended {
	var ended []Ended

	for k, build := range b.builds {
		if k.peer == peer {
			ended = append(ended, Ended{Build: build, Outcome: Gone})
		}
	}

	for _, e := range ended {
		b.remove(key{e.DrvPath, peer})
	}

	sortEnded(ended)

	return ended
}

// Expire forgets every build whose announcement lapsed at or before now
// and returns them with the outcome Expired, sorted by derivation and
// peer.
func (b *Board) Expire(now time.Time) []Ended {
	var ended []Ended

	for _, build := range b.builds {
		if !build.Expires.After(now) {
			ended = append(ended, Ended{Build: build, Outcome: Expired})
		}
	}

	for _, e := range ended {
		b.remove(key{e.DrvPath, e.Peer})
	}

	sortEnded(ended)

	return ended
}

// Building returns the peers building drvPath whose announcements have
// not lapsed at now, the earliest ETA first.
func (b *Board) Building(drvPath string, now time.Time) []Build {
	var builds []Build

	for _, peer := range b.byDrv[drvPath] {
		build := b.builds[key{drvPath, peer}]
		if build.Expires.After(now) {
			builds = append(builds, build)
		}
	}

	slices.SortFunc(builds, func(x, y Build) int {
		return cmp.Or(x.ETA.Compare(y.ETA), cmp.Compare(x.Peer, y.Peer))
	})

	return builds
}

// NextExpiry returns the earliest Expires of all builds, and false when
// the Board is empty. It takes time linear in Len.
func (b *Board) NextExpiry() (time.Time, bool) {
	var next time.Time

	for _, build := range b.builds {
		if next.IsZero() || build.Expires.Before(next) {
			next = build.Expires
		}
	}

	return next, !next.IsZero()
}

func sortEnded(ended []Ended) {
	slices.SortFunc(ended, func(x, y Ended) int {
		return cmp.Or(cmp.Compare(x.DrvPath, y.DrvPath), cmp.Compare(x.Peer, y.Peer))
	})
}
