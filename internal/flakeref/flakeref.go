// Package flakeref checks the syntax of flake references without running
// nix, so a server without nix can reject a bad reference when a project
// is created rather than when a worker first evaluates it.
//
// It accepts the URL-like forms of Nix 2.8 and later: absolute paths,
// path:, git+file/https/http/ssh, hg+file/https/http/ssh, github:,
// gitlab:, sourcehut:, tarball and file URLs over http(s) or file, and
// flake:<id> registry references. It rejects what a server cannot
// resolve the same way as the user's shell: relative paths, "~" and bare
// registry names that look like relative paths.
//
// Passing Parse does not mean that nix can fetch the reference.
package flakeref

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"unicode"
)

// ErrInvalid is wrapped by every error that Parse returns.
var ErrInvalid = errors.New("invalid flake reference")

// Kind is the fetcher type of a flake reference, named as in nix's
// attribute set form ("path", "git", "github", ...).
type Kind string

// The kinds of references that Parse accepts.
const (
	Path      Kind = "path"
	Git       Kind = "git"
	Mercurial Kind = "hg"
	GitHub    Kind = "github"
	GitLab    Kind = "gitlab"
	SourceHut Kind = "sourcehut"
	Tarball   Kind = "tarball"
	File      Kind = "file"
	Indirect  Kind = "indirect"
)

// Ref is a syntactically valid flake reference.
type Ref struct {
	// Kind is the fetcher type.
	Kind Kind
	// Raw is the reference as given.
	Raw string
}

const examples = "such as /srv/project, path:/srv/project, git+https://example.org/repo.git, github:owner/repo or flake:nixpkgs"

// Parse checks the syntax of a flake reference. The error wraps ErrInvalid
// and states what is wrong and what to write instead.
func Parse(ref string) (Ref, error) {
	kind, err := parse(ref)
	if err != nil {
		return Ref{}, fmt.Errorf("%w %q: %w", ErrInvalid, ref, err)
	}
	return Ref{Kind: kind, Raw: ref}, nil
}

// schemeRegexp matches a URL scheme and its colon, as in RFC 3986.
var schemeRegexp = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)

func parse(ref string) (Kind, error) {
	if strings.TrimSpace(ref) == "" {
		return "", fmt.Errorf("it is empty: write a flake reference, %s", examples)
	}
	if i := strings.IndexFunc(ref, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }); i >= 0 {
		return "", fmt.Errorf("it contains whitespace or a control character at byte %d: percent-encode it, as %%20 for a space", i)
	}
	if _, fragment, ok := strings.Cut(ref, "#"); ok {
		return "", fmt.Errorf("it has the fragment #%s: remove it, because the entry point patterns select the attributes", fragment)
	}

	if strings.HasPrefix(ref, "/") {
		return Path, checkPath(ref)
	}
	scheme := schemeRegexp.FindString(ref)
	if scheme == "" {
		return "", relativeError(ref)
	}
	scheme = strings.ToLower(strings.TrimSuffix(scheme, ":"))
	rest := ref[len(scheme)+1:]

	switch scheme {
	case "path":
		return Path, checkPath(rest)
	case "git+file", "hg+file", "tarball+file", "file+file", "file":
		return fileKind(scheme), checkFileURL(ref)
	case "git+https", "git+http", "git+ssh", "hg+https", "hg+http", "hg+ssh":
		return fileKind(scheme), checkNetworkURL(ref)
	case "tarball+https", "tarball+http", "file+https", "file+http", "https", "http":
		return fileKind(scheme), checkNetworkURL(ref)
	case "github", "gitlab", "sourcehut":
		return Kind(scheme), checkForge(scheme, rest)
	case "flake":
		return Indirect, checkIndirect(rest)
	}
	return "", fmt.Errorf("unknown scheme %q: write a flake reference, %s", scheme+":", examples)
}

// fileKind returns the Kind for a URL scheme.
func fileKind(scheme string) Kind {
	switch {
	case strings.HasPrefix(scheme, "git+"):
		return Git
	case strings.HasPrefix(scheme, "hg+"):
		return Mercurial
	case strings.HasPrefix(scheme, "file+"):
		return File
	}
	// Nix decides between tarball and file by the name's extension for
	// plain http(s): and file: URLs; both unpack the same way here.
	return Tarball
}

func relativeError(ref string) error {
	if strings.HasPrefix(ref, "~") {
		return fmt.Errorf("%q is a path relative to a home directory, which nix does not expand and the server may not share: write an absolute path such as /home/me/project", ref)
	}
	const reason = "the server may run in another directory than your shell, so write an absolute path such as /srv/project"
	if flakeID.MatchString(ref) {
		return fmt.Errorf("%q is a relative path or a bare registry name: %s, or flake:%s for a registry entry", ref, reason, ref)
	}
	return fmt.Errorf("%q is a relative path: %s", ref, reason)
}

// checkPath checks the part after "path:" or a bare absolute path, with
// an optional query.
func checkPath(rest string) error {
	path, query, _ := strings.Cut(rest, "?")
	if !strings.HasPrefix(path, "/") {
		return relativeError(path)
	}
	return checkQuery(query)
}

func checkFileURL(ref string) error {
	u, err := url.Parse(ref)
	if err != nil {
		return fmt.Errorf("not a valid URL: %w", errors.Unwrap(err))
	}
	if u.Opaque != "" || !strings.HasPrefix(u.Path, "/") {
		return fmt.Errorf("the path must be absolute, as in %s:///srv/project", u.Scheme)
	}
	if u.Host != "" {
		return fmt.Errorf("host %q in a local URL: write three slashes, as in %s:///srv/project", u.Host, u.Scheme)
	}
	return checkQuery(u.RawQuery)
}

func checkNetworkURL(ref string) error {
	u, err := url.Parse(ref)
	if err != nil {
		return fmt.Errorf("not a valid URL: %w", errors.Unwrap(err))
	}
	if u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("the host is missing: write %s://host/path", u.Scheme)
	}
	return checkQuery(u.RawQuery)
}

// forgeName matches an owner or repository name on GitHub, GitLab or
// SourceHut, where owners start with "~".
var forgeName = regexp.MustCompile(`^~?[a-zA-Z0-9._-]+$`)

func checkForge(scheme, rest string) error {
	path, query, _ := strings.Cut(rest, "?")
	segments := strings.Split(path, "/")
	if len(segments) < 2 || len(segments) > 3 {
		return fmt.Errorf("want %s:owner/repo or %s:owner/repo/branch-or-revision", scheme, scheme)
	}
	for i, segment := range segments {
		field := []string{"owner", "repository", "branch or revision"}[i]
		if segment == "" {
			return fmt.Errorf("the %s is empty: want %s:owner/repo[/branch-or-revision]", field, scheme)
		}
		if i < 2 && !forgeName.MatchString(segment) {
			return fmt.Errorf("the %s %q has characters other than letters, digits, '.', '_' and '-'", field, segment)
		}
	}
	return checkQuery(query)
}

// flakeID matches a registry reference: an id with an optional branch and
// revision, as nix's flake registry accepts.
var flakeID = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_-]*(/[a-zA-Z0-9@._/-]+)?$`)

func checkIndirect(rest string) error {
	id, query, _ := strings.Cut(rest, "?")
	if !flakeID.MatchString(id) || strings.Contains(id, "//") || strings.HasSuffix(id, "/") {
		return fmt.Errorf("%q is not a registry name: want flake:name or flake:name/branch, where the name starts with a letter", id)
	}
	return checkQuery(query)
}

func checkQuery(query string) error {
	if query == "" {
		return nil
	}
	values, err := url.ParseQuery(query)
	if err != nil {
		return fmt.Errorf("invalid query %q: %w", query, err)
	}
	for key := range values {
		if key == "" {
			return fmt.Errorf("invalid query %q: a parameter has no name", query)
		}
	}
	// Nix accepts only a full commit hash as rev, and says so only when
	// it evaluates; checking here rejects the project at creation.
	if rev := values.Get("rev"); values.Has("rev") && !isCommitHash(rev) {
		return fmt.Errorf("rev %q is not a full commit hash: give 40 hexadecimal digits, or use ref=BRANCH for a branch or tag", rev)
	}
	return nil
}

func isCommitHash(s string) bool {
	if len(s) != 40 {
		return false
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F') {
			return false
		}
	}
	return true
}
