package nix

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// EvalJSON evaluates the Nix expression expr in pure mode with `nix eval
// --json --expr` and decodes the result into v. On failure it returns an
// *Error whose Message is nix's own error message.
func (c *Client) EvalJSON(ctx context.Context, expr string, v any) error {
	out, err := c.runOutput(ctx, command{
		binary: c.cfg.Binary,
		name:   "nix eval",
		args:   []string{"eval", "--json", "--expr", expr},
	})
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("decode nix eval output: %w", err)
	}
	return nil
}

// EvalString evaluates the Nix expression expr, which must give a string,
// in pure mode with `nix eval --raw --expr`.
func (c *Client) EvalString(ctx context.Context, expr string) (string, error) {
	out, err := c.runOutput(ctx, command{
		binary: c.cfg.Binary,
		name:   "nix eval",
		args:   []string{"eval", "--raw", "--expr", expr},
	})
	if err != nil {
		return "", err
	}
	return string(out), nil
}

// AttrNames returns the attribute names of the attribute set at attrPath
// in the outputs of the locked flake, sorted as nix sorts them.
func (c *Client) AttrNames(ctx context.Context, lockedURL string, attrPath []string) ([]string, error) {
	var names []string
	err := c.EvalJSON(ctx, "builtins.attrNames "+OutputsExpr(lockedURL, attrPath), &names)
	return names, err
}

// DrvPath evaluates the derivation at attrPath in the outputs of the
// locked flake and returns its .drv store path. Evaluating it writes the
// .drv file and those of its inputs into the Client's store.
func (c *Client) DrvPath(ctx context.Context, lockedURL string, attrPath []string) (string, error) {
	return c.EvalString(ctx, OutputsExpr(lockedURL, attrPath)+".drvPath")
}

// OutputsExpr returns a Nix expression for the value at attrPath in the
// outputs of the flake lockedURL. Pure evaluation accepts it only for a
// locked reference, one with a revision or a narHash.
func OutputsExpr(lockedURL string, attrPath []string) string {
	var b strings.Builder
	b.WriteString("(builtins.getFlake ")
	b.WriteString(QuoteString(lockedURL))
	b.WriteString(").outputs")
	for _, name := range attrPath {
		b.WriteByte('.')
		b.WriteString(QuoteString(name))
	}
	return b.String()
}

// QuoteString returns s as a Nix string literal, escaping quotes,
// backslashes, "${" and control characters that have an escape.
func QuoteString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '\\', '$':
			b.WriteByte('\\')
			b.WriteByte(c)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}
