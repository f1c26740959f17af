// Package scripttest runs data-driven tests for the deterministic parts of
// the mesh: a testdata file lists commands, each followed by the output it
// must produce.
//
// A file is a sequence of blocks separated by blank lines. A block is a
// command line ("name arg key=value ..."), optional input lines, a line
// "----", and the expected output, which ends at the next blank line or
// at the end of the file. Lines starting with "#" between blocks are
// comments. Run the tests with -rewrite to replace every expected output
// with the actual one, then review the diff.
package scripttest

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
)

// optionName is the form of the key of a key=value word. Other words
// with "=", such as base64 text, are arguments.
var optionName = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of testdata scripts")

// Command is one command of a script.
type Command struct {
	// Name is the first word of the command line.
	Name string
	// Args are the words of the command line that are not options.
	Args []string
	// Options are the words of the command line of the form key=value,
	// where key is a lower-case identifier.
	Options map[string]string
	// Input are the lines between the command line and "----".
	Input []string
	// Pos is "file:line" of the command line, for failure messages.
	Pos string
}

// Option returns the value of option key and whether it was given.
func (c *Command) Option(key string) (string, bool) {
	v, ok := c.Options[key]
	return v, ok
}

type block struct {
	cmd      Command
	expected string
	// start and end are the line indexes of the expected output, end
	// exclusive, so a rewrite can replace them.
	start, end int
}

// Run runs every command of the script at path through do and compares
// the output do returns with the expected output, ignoring leading and
// trailing white space. do reports a malformed command with t.Fatalf.
func Run(t *testing.T, path string, do func(t *testing.T, c *Command) string) {
	t.Helper()

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")

	blocks, err := parse(path, lines)
	if err != nil {
		t.Fatal(err)
	}

	outputs := make([]string, len(blocks))
	for i := range blocks {
		b := &blocks[i]
		got := strings.TrimSpace(do(t, &b.cmd))
		outputs[i] = got

		if !*rewrite && got != b.expected {
			t.Errorf("%s: %s =\n%s\nwant\n%s", b.cmd.Pos, b.cmd.Name, got, b.expected)
		}
	}

	if *rewrite {
		if err := os.WriteFile(path, rewritten(lines, blocks, outputs), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func parse(path string, lines []string) ([]block, error) {
	var blocks []block

	for i := 0; i < len(lines); {
		line := lines[i]
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			i++
			continue
		}

		b := block{cmd: Command{Options: map[string]string{}, Pos: fmt.Sprintf("%s:%d", path, i+1)}}

		for j, word := range strings.Fields(line) {
			key, value, isOption := strings.Cut(word, "=")
			switch {
			case j == 0:
				b.cmd.Name = word
			case isOption && optionName.MatchString(key):
				b.cmd.Options[key] = value
			default:
				b.cmd.Args = append(b.cmd.Args, word)
			}
		}
		i++

		for i < len(lines) && lines[i] != "----" {
			if strings.TrimSpace(lines[i]) == "" {
				return nil, fmt.Errorf("%s: missing \"----\" after the command", b.cmd.Pos)
			}
			b.cmd.Input = append(b.cmd.Input, lines[i])
			i++
		}

		if i == len(lines) {
			return nil, fmt.Errorf("%s: missing \"----\" after the command", b.cmd.Pos)
		}
		i++

		b.start = i
		for i < len(lines) && strings.TrimSpace(lines[i]) != "" {
			i++
		}
		b.end = i
		b.expected = strings.TrimSpace(strings.Join(lines[b.start:b.end], "\n"))

		blocks = append(blocks, b)
	}

	return blocks, nil
}

func rewritten(lines []string, blocks []block, outputs []string) []byte {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)

	next := 0
	for i, b := range blocks {
		for _, line := range lines[next:b.start] {
			fmt.Fprintln(w, line)
		}
		fmt.Fprintln(w, outputs[i])
		next = b.end
	}

	for _, line := range lines[next:] {
		fmt.Fprintln(w, line)
	}

	w.Flush()

	return buf.Bytes()
}
