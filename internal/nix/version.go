package nix

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// Version is a nix implementation and its version, from `nix --version`.
type Version struct {
	// Implementation is the text in parentheses before the first comma,
	// such as "Nix" or "Lix".
	Implementation string
	Major          int
	Minor          int
	Patch          int
	// Raw is the version as printed, such as "2.18.1" or "2.91.1".
	Raw string
}

func (v Version) String() string {
	return v.Implementation + " " + v.Raw
}

// AtLeast reports whether v is major.minor or later.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

// Version runs `nix --version` and parses its output.
func (c *Client) Version(ctx context.Context) (Version, error) {
	out, err := c.runOutput(ctx, command{binary: c.cfg.Binary, name: "nix --version", args: []string{"--version"}})
	if err != nil {
		return Version{}, err
	}
	return ParseVersion(string(out))
}

// ParseVersion parses the first line of `nix --version`, such as
// "nix (Nix) 2.8.0" or "nix (Lix, like Nix) 2.91.1". Missing minor or
// patch numbers are zero, and a suffix such as "pre20240101" is ignored.
func ParseVersion(output string) (Version, error) {
	line, _, _ := strings.Cut(strings.TrimSpace(output), "\n")

	open := strings.IndexByte(line, '(')
	closing := strings.LastIndexByte(line, ')')
	if open < 0 || closing < open {
		return Version{}, fmt.Errorf("parse nix version %q: expected \"nix (Nix) X.Y.Z\"", line)
	}
	implementation, _, _ := strings.Cut(line[open+1:closing], ",")
	raw := strings.TrimSpace(line[closing+1:])
	if raw == "" {
		return Version{}, fmt.Errorf("parse nix version %q: no version number after the parentheses", line)
	}

	v := Version{Implementation: strings.TrimSpace(implementation), Raw: raw}
	numbers := strings.SplitN(raw, ".", 3)
	targets := []*int{&v.Major, &v.Minor, &v.Patch}
	for i, number := range numbers {
		digits := number[:len(number)-len(strings.TrimLeft(number, "0123456789"))]
		n, err := strconv.Atoi(digits)
		if err != nil {
			if i == 0 {
				return Version{}, fmt.Errorf("parse nix version %q: major version is not a number", line)
			}
			break
		}
		*targets[i] = n
		if len(digits) != len(number) {
			break
		}
	}
	return v, nil
}
