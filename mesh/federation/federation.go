// Package federation holds the membership of a mesh: the organisations
// whose nodes may connect, with the libp2p peer IDs of their nodes and the
// public keys that sign their caches' narinfos.
//
// A Federation is immutable and safe for concurrent use. Changes such as
// Trust return a new Federation, so a node swaps one pointer and its
// connection gater never sees a half-updated list.
package federation

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

const (
	// DefaultRecordLifetime is how long a provider record lives on the
	// mesh's DHT when the federation file does not set record_lifetime.
	DefaultRecordLifetime = 24 * time.Hour
	// MinRecordLifetime and MaxRecordLifetime bound record_lifetime.
	MinRecordLifetime = time.Minute
	MaxRecordLifetime = 30 * 24 * time.Hour

	// MaxFileSize bounds a federation file in bytes.
	MaxFileSize = 1 << 20
	// maxOrgLen bounds the name of an organisation in bytes.
	maxOrgLen = 128
)

// ErrInvalid is wrapped by every error about an invalid federation file,
// member, peer ID or key.
var ErrInvalid = errors.New("invalid federation")

// Member is one organisation of a federation.
type Member struct {
	// Org names the organisation, 1 to 128 bytes without control
	// characters. It is unique within a federation.
	Org string
	// PeerIDs are the libp2p peer IDs of the organisation's nodes. A peer
	// ID belongs to one organisation only.
	PeerIDs []peer.ID
	// Keys are the public keys that sign the organisation's narinfos.
	Keys []narinfo.PublicKey
}

// Federation is a validated list of members. The zero value has no
// members and the default record lifetime.
type Federation struct {
	recordLifetime time.Duration
	// members is sorted by Org.
	members []Member
	orgOf   map[peer.ID]string
	keys    []narinfo.PublicKey
}

// New checks members and returns a Federation with them. A
// recordLifetime of zero means DefaultRecordLifetime.
func New(recordLifetime time.Duration, members []Member) (*Federation, error) {
	if recordLifetime == 0 {
		recordLifetime = DefaultRecordLifetime
	}

	if recordLifetime < MinRecordLifetime || recordLifetime > MaxRecordLifetime {
		return nil, fmt.Errorf("%w: record lifetime %s is outside [%s, %s]", ErrInvalid, recordLifetime, MinRecordLifetime, MaxRecordLifetime)
	}

	members = slices.Clone(members)
	slices.SortStableFunc(members, func(a, b Member) int { return strings.Compare(a.Org, b.Org) })

	f := &Federation{recordLifetime: recordLifetime, orgOf: map[peer.ID]string{}}

	for i, m := range members {
		if err := checkOrg(m.Org); err != nil {
			return nil, err
		}

		if i > 0 && members[i-1].Org == m.Org {
			return nil, fmt.Errorf("%w: organisation %q is listed twice", ErrInvalid, m.Org)
		}

		m.PeerIDs = slices.Clone(m.PeerIDs)
		m.Keys = slices.Clone(m.Keys)

		for _, id := range m.PeerIDs {
			if err := id.Validate(); err != nil {
				return nil, fmt.Errorf("%w: organisation %q: peer ID %q: %w", ErrInvalid, m.Org, id, err)
			}

			if other, ok := f.orgOf[id]; ok {
				return nil, fmt.Errorf("%w: peer ID %s is listed for both %q and %q", ErrInvalid, id, other, m.Org)
			}

			f.orgOf[id] = m.Org
		}

		for _, key := range m.Keys {
			if slices.ContainsFunc(f.keys, func(k narinfo.PublicKey) bool { return k.String() == key.String() }) {
				return nil, fmt.Errorf("%w: key %q is listed twice", ErrInvalid, key.String())
			}

			f.keys = append(f.keys, key)
		}

		f.members = append(f.members, m)
	}

	return f, nil
}

func checkOrg(org string) error {
	if org == "" || len(org) > maxOrgLen {
		return fmt.Errorf("%w: organisation name %q must have 1 to %d bytes", ErrInvalid, org, maxOrgLen)
	}

	for _, r := range org {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: organisation name %q contains a control character", ErrInvalid, org)
		}
	}

	return nil
}

// RecordLifetime returns how long a provider record lives on the mesh's
// DHT. Every member must use the same value.
func (f *Federation) RecordLifetime() time.Duration {
	if f.recordLifetime == 0 {
		return DefaultRecordLifetime
	}
	return f.recordLifetime
}

// Admits reports whether id is the peer ID of a member's node.
func (f *Federation) Admits(id peer.ID) bool {
	_, ok := f.orgOf[id]
	return ok
}

// OrgOf returns the organisation of the node id, or "" and false for a
// peer that is not a member.
func (f *Federation) OrgOf(id peer.ID) (string, bool) {
	org, ok := f.orgOf[id]
	return org, ok
}

// Keys returns the public keys of all members. A narinfo signed by any of
// them is trusted. The caller must not modify the slice.
func (f *Federation) Keys() []narinfo.PublicKey {
	return f.keys
}

// Members returns the members sorted by organisation name. The caller
// must not modify the slice.
func (f *Federation) Members() []Member {
	return f.members
}

// PeerIDs returns the peer IDs of all members, sorted.
func (f *Federation) PeerIDs() []peer.ID {
	ids := make([]peer.ID, 0, len(f.orgOf))
	for id := range f.orgOf {
		ids = append(ids, id)
	}

	slices.Sort(ids)

	return ids
}

// Trust returns a copy of f in which the node id and key belong to org.
// It adds org when it is not a member yet and leaves f unchanged. Trusting
// a peer ID or key that org already has is not an error; one that another
// organisation has is.
func (f *Federation) Trust(org string, id peer.ID, key narinfo.PublicKey) (*Federation, error) {
	members := make([]Member, 0, len(f.members)+1)
	found := false

	for _, m := range f.members {
		if m.Org == org {
			found = true
			m.PeerIDs = appendNew(slices.Clone(m.PeerIDs), id)

			if !slices.ContainsFunc(m.Keys, func(k narinfo.PublicKey) bool { return k.String() == key.String() }) {
				m.Keys = append(slices.Clone(m.Keys), key)
			}
		}

		members = append(members, m)
	}

	if !found {
		members = append(members, Member{Org: org, PeerIDs: []peer.ID{id}, Keys: []narinfo.PublicKey{key}})
	}

	return New(f.RecordLifetime(), members)
}

func appendNew(ids []peer.ID, id peer.ID) []peer.ID {
	if slices.Contains(ids, id) {
		return ids
	}
	return append(ids, id)
}

// file is the JSON form of a federation.
type file struct {
	// RecordLifetime is a Go duration such as "24h".
	RecordLifetime string       `json:"record_lifetime,omitempty"`
	Members        []fileMember `json:"members"`
}

type fileMember struct {
	Org     string   `json:"org"`
	PeerIDs []string `json:"peer_ids"`
	Keys    []string `json:"keys"`
}

// Parse reads a federation file of at most MaxFileSize bytes:
//
//	{"record_lifetime": "24h",
//	 "members": [{"org": "example", "peer_ids": ["12D3Koo..."], "keys": ["cache.example.org-1:<base64>"]}]}
//
// Unknown fields are rejected, so a misspelt field is not silently
// ignored. Errors wrap ErrInvalid.
func Parse(r io.Reader) (*Federation, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read federation: %w", err)
	}

	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%w: file is longer than %d bytes", ErrInvalid, MaxFileSize)
	}

	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()

	var f file
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}

	if dec.More() {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrInvalid)
	}

	var lifetime time.Duration
	if f.RecordLifetime != "" {
		lifetime, err = time.ParseDuration(f.RecordLifetime)
		if err != nil {
			return nil, fmt.Errorf("%w: record_lifetime %q: %w", ErrInvalid, f.RecordLifetime, err)
		}

		if lifetime == 0 {
			return nil, fmt.Errorf("%w: record_lifetime is zero", ErrInvalid)
		}
	}

	members := make([]Member, 0, len(f.Members))

	for _, fm := range f.Members {
		m := Member{Org: fm.Org}

		for _, s := range fm.PeerIDs {
			id, err := peer.Decode(s)
			if err != nil {
				return nil, fmt.Errorf("%w: organisation %q: peer ID %q: %w", ErrInvalid, fm.Org, s, err)
			}

			m.PeerIDs = append(m.PeerIDs, id)
		}

		for _, s := range fm.Keys {
			key, err := narinfo.ParsePublicKey(s)
			if err != nil {
				return nil, fmt.Errorf("%w: organisation %q: %w", ErrInvalid, fm.Org, err)
			}

			m.Keys = append(m.Keys, key)
		}

		members = append(members, m)
	}

	return New(lifetime, members)
}

// MarshalJSON returns f in the form Parse reads, members sorted by
// organisation.
func (f *Federation) MarshalJSON() ([]byte, error) {
	out := file{RecordLifetime: f.RecordLifetime().String(), Members: []fileMember{}}

	for _, m := range f.members {
		fm := fileMember{Org: m.Org, PeerIDs: []string{}, Keys: []string{}}

		for _, id := range m.PeerIDs {
			fm.PeerIDs = append(fm.PeerIDs, id.String())
		}

		for _, key := range m.Keys {
			fm.Keys = append(fm.Keys, key.String())
		}

		out.Members = append(out.Members, fm)
	}

	return json.MarshalIndent(out, "", "  ")
}
