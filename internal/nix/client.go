// Package nix runs the nix commands that a worker needs and parses their
// output. It is the only package in the repository that starts nix.
//
// Every command gets its settings on the command line, so a Client behaves
// the same whatever /etc/nix/nix.conf contains: the experimental features
// nix-command and flakes, the substituters, trusted public keys, sandbox
// settings and build users group all come from Config. The commands and
// flags used exist in Nix 2.8 and in current Nix and Lix, and the parsers
// accept the JSON shapes of both.
package nix

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// Config configures a Client. The zero value is not usable: Binary must be
// set. Every setting is passed to nix explicitly, including empty lists.
type Config struct {
	// Binary is the nix executable, a name looked up in PATH or a path.
	// The nix-store executable is expected next to it.
	Binary string

	// StoreDir is the root of a chroot store (--store DIR): store paths
	// stay /nix/store/... logically and live under DIR/nix/store. Empty
	// means the default store. It must be an absolute path.
	StoreDir string

	// Substituters are binary cache URLs, tried in order. The node's cache
	// comes first. Empty means no substituters at all.
	Substituters []string

	// TrustedPublicKeys verify signatures on substituted paths, as
	// "name:base64".
	TrustedPublicKeys []string

	// Sandbox runs builders in the nix sandbox.
	Sandbox bool

	// SandboxPaths are extra paths mounted into the sandbox, as "path" or
	// "target=source", such as "/bin/sh=/bin/busybox".
	SandboxPaths []string

	// BuildUsersGroup is the group whose users run builders. Empty runs
	// builders as the calling user, which suits a chroot store run as root.
	BuildUsersGroup string

	// ExtraOptions are passed as --option NAME VALUE after the settings
	// above, so they override them.
	ExtraOptions []Option
}

// Option is one nix setting, as in nix.conf.
type Option struct {
	Name  string
	Value string
}

// Client runs nix commands with the settings of a Config. It is safe for
// concurrent use: each method starts its own processes.
type Client struct {
	cfg Config
}

// New returns a Client for cfg. It checks the configuration only; it does
// not start nix.
func New(cfg Config) (*Client, error) {
	cfg.Substituters = clone(cfg.Substituters)
	cfg.TrustedPublicKeys = clone(cfg.TrustedPublicKeys)
	cfg.SandboxPaths = clone(cfg.SandboxPaths)
	cfg.ExtraOptions = clone(cfg.ExtraOptions)

	if cfg.Binary == "" {
		return nil, errors.New("nix config: Binary is empty: set it to \"nix\" or a path to the nix executable")
	}
	if cfg.StoreDir != "" && !filepath.IsAbs(cfg.StoreDir) {
		return nil, fmt.Errorf("nix config: StoreDir %q is relative: use an absolute path", cfg.StoreDir)
	}
	for _, list := range [][]string{cfg.Substituters, cfg.TrustedPublicKeys, cfg.SandboxPaths} {
		for _, item := range list {
			if item == "" || strings.ContainsAny(item, " \t\n") {
				return nil, fmt.Errorf("nix config: list item %q is empty or contains whitespace, which nix would split", item)
			}
		}
	}
	for _, o := range cfg.ExtraOptions {
		if o.Name == "" {
			return nil, errors.New("nix config: an extra option has an empty name")
		}
	}
	return &Client{cfg: cfg}, nil
}

// StoreDir returns the chroot store root of the Client, empty for the
// default store.
func (c *Client) StoreDir() string {
	return c.cfg.StoreDir
}

// RealPath returns where the store path lives on the file system: under
// the chroot store root if there is one, else the path itself.
func (c *Client) RealPath(storePath string) string {
	if c.cfg.StoreDir == "" {
		return storePath
	}
	return filepath.Join(c.cfg.StoreDir, storePath)
}

// settingArgs returns the flags that every command gets. They are
// settings, not command flags, so nix and nix-store both accept them.
func (c *Client) settingArgs() []string {
	args := []string{"--extra-experimental-features", "nix-command flakes"}
	if c.cfg.StoreDir != "" {
		args = append(args, "--store", c.cfg.StoreDir)
	}

	sandbox := "false"
	if c.cfg.Sandbox {
		sandbox = "true"
	}
	args = append(args,
		"--option", "substituters", strings.Join(c.cfg.Substituters, " "),
		"--option", "trusted-public-keys", strings.Join(c.cfg.TrustedPublicKeys, " "),
		"--option", "sandbox", sandbox,
		"--option", "sandbox-paths", strings.Join(c.cfg.SandboxPaths, " "),
		"--option", "build-users-group", c.cfg.BuildUsersGroup,
		// Nix remembers a missing narinfo for an hour per cache URL. The
		// node's cache gains paths during an evaluation, so an input that
		// was missing a minute ago must be looked up again, not rebuilt.
		"--option", "narinfo-cache-negative-ttl", "0",
		// A found one it remembers for a month, so a node that answers on
		// the URL of an earlier one, with another key, would look unsigned.
		"--option", "narinfo-cache-positive-ttl", "0",
		// The node's cache answers 502 or 504 when an upstream fails. Nix
		// treats that as fatal unless fallback lets it build the path.
		"--option", "fallback", "true",
	)
	for _, o := range c.cfg.ExtraOptions {
		args = append(args, "--option", o.Name, o.Value)
	}
	return args
}

// storeBinary returns the nix-store executable that sits beside Binary.
func (c *Client) storeBinary() string {
	dir, file := filepath.Split(c.cfg.Binary)
	if file != "nix" {
		// NOTE: a binary not named "nix" has no known nix-store sibling;
		// PATH decides.
		return "nix-store"
	}
	return dir + "nix-store"
}

func clone[T any](s []T) []T {
	if s == nil {
		return nil
	}
	return append([]T(nil), s...)
}
