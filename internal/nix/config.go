package nix

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// SystemFeatures returns nix's system-features setting, as the client's
// settings leave it: the features this machine builds derivations with
// requiredSystemFeatures for, such as "kvm" and "big-parallel". It runs
// `nix show-config --json`, and `nix config show --json` where the old
// name is gone.
func (c *Client) SystemFeatures(ctx context.Context) ([]string, error) {
	out, err := c.runOutput(ctx, command{binary: c.cfg.Binary, name: "nix show-config", args: []string{"show-config", "--json"}})
	if err != nil && !errors.Is(err, ErrNotStarted) && ctx.Err() == nil {
		var err2 error
		out, err2 = c.runOutput(ctx, command{binary: c.cfg.Binary, name: "nix config show", args: []string{"config", "show", "--json"}})
		if err2 == nil {
			err = nil
		}
	}
	if err != nil {
		return nil, err
	}
	return ParseSystemFeatures(out)
}

// ParseSystemFeatures reads system-features from the JSON of `nix
// show-config --json`: an object of settings, each with its "value",
// which is a list of strings in Nix 2.8 (testdata/show-config-2.8.json).
// A value given as one space-separated string is accepted too.
func ParseSystemFeatures(data []byte) ([]string, error) {
	var settings map[string]struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(data, &settings); err != nil {
		return nil, fmt.Errorf("parse nix settings: %w", err)
	}
	setting, ok := settings["system-features"]
	if !ok || len(setting.Value) == 0 {
		return nil, errors.New("parse nix settings: no system-features value")
	}

	var list []string
	if err := json.Unmarshal(setting.Value, &list); err == nil {
		return cleanFeatures(list), nil
	}
	var text string
	if err := json.Unmarshal(setting.Value, &text); err == nil {
		return cleanFeatures(strings.Fields(text)), nil
	}
	return nil, fmt.Errorf("parse nix settings: system-features value %.40q is neither a list nor a string", setting.Value)
}

// cleanFeatures drops empty and repeated features and bounds their
// number and length, since they go into the worker's hello.
func cleanFeatures(in []string) []string {
	out := []string{}
	for _, f := range in {
		f = strings.TrimSpace(f)
		if f == "" || len(f) > 256 || len(out) >= 64 || slices.Contains(out, f) {
			continue
		}
		out = append(out, f)
	}
	return out
}
