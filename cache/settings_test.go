package cache

import (
	"context"
	"errors"
	"testing"
)

// UpdateSettings with Upstreams replaces the list and the other fields in
// one write, and an invalid entry changes nothing.
func TestUpdateSettingsReplacesUpstreams(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	if _, err := s.AddUpstream(ctx, Upstream{URL: "http://127.0.0.1:1", PublicKeys: []string{testPublicKey}}); err != nil {
		t.Fatal(err)
	}

	priority := 25
	want := []Upstream{{URL: "http://127.0.0.1:2/", PublicKeys: []string{testPublicKey}, Priority: 10}}
	got, err := s.UpdateSettings(ctx, SettingsUpdate{Priority: &priority, Upstreams: &want})
	if err != nil {
		t.Fatal(err)
	}
	if got.Priority != 25 {
		t.Errorf("Priority = %d, want 25", got.Priority)
	}
	if len(got.Upstreams) != 1 || got.Upstreams[0].URL != "http://127.0.0.1:2" || got.Upstreams[0].Priority != 10 {
		t.Errorf("Upstreams = %+v, want only http://127.0.0.1:2 with priority 10", got.Upstreams)
	}

	other := 99
	bad := []Upstream{
		{URL: "http://127.0.0.1:3", PublicKeys: []string{testPublicKey}},
		{URL: "http://127.0.0.1:3/", PublicKeys: []string{testPublicKey}},
	}
	if _, err := s.UpdateSettings(ctx, SettingsUpdate{Priority: &other, Upstreams: &bad}); !errors.Is(err, ErrInvalidSettings) {
		t.Errorf("UpdateSettings(a URL twice) = %v, want ErrInvalidSettings", err)
	}
	if got := s.Settings(); got.Priority != 25 || len(got.Upstreams) != 1 || got.Upstreams[0].URL != "http://127.0.0.1:2" {
		t.Errorf("settings after a rejected update = priority %d, upstreams %+v, want them unchanged", got.Priority, got.Upstreams)
	}
}
