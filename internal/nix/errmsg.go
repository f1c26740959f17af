package nix

import (
	"regexp"
	"strings"
)

// maxMessage bounds the length of an extracted error message in bytes.
const maxMessage = 16 << 10

var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// noiseLines are hints nix appends to errors that mean nothing to a user
// of Gradient, who cannot pass flags to nix.
var noiseLines = []string{
	"(use '--show-trace' to show detailed location information)",
}

// ErrorMessage extracts nix's error message from its stderr: the last
// block that starts with a line "error: ...", without that prefix, with
// the continuation lines' indentation removed and nix's hints dropped.
// Nix 2.18 and later print a trace of "… while evaluating" lines between
// an outer "error:" and the innermost one; the innermost is kept. Without
// any "error:" line the last non-empty line is returned. Git's "fatal:"
// lines before the error are appended to it. The result is at most
// 16 KiB.
func ErrorMessage(stderr []byte) string {
	text := ansiEscape.ReplaceAllString(string(stderr), "")
	lines := strings.Split(strings.ReplaceAll(text, "\r\n", "\n"), "\n")

	start := -1
	for i, line := range lines {
		if strings.HasPrefix(strings.TrimLeft(line, " "), "error:") {
			start = i
		}
	}
	if start < 0 {
		return lastLine(lines)
	}

	first := lines[start]
	indent := len(first) - len(strings.TrimLeft(first, " ")) + len("error: ")
	kept := []string{strings.TrimSpace(strings.TrimPrefix(strings.TrimLeft(first, " "), "error:"))}
	for _, line := range lines[start+1:] {
		if isNoise(line) {
			continue
		}
		kept = append(kept, strings.TrimRight(dedent(line, indent), " \t"))
	}

	// Nix reports a failing git with only its exit code. Git's own
	// "fatal:" lines come before nix's error and say what is wrong, such
	// as an unknown branch or a missing repository.
	var gitLines []string
	for _, line := range lines[:start] {
		if strings.HasPrefix(line, "fatal: ") && len(gitLines) < 5 {
			gitLines = append(gitLines, strings.TrimSpace(line))
		}
	}
	if len(gitLines) > 0 {
		for len(kept) > 1 && strings.TrimSpace(kept[len(kept)-1]) == "" {
			kept = kept[:len(kept)-1]
		}
		kept = append(kept, gitLines...)
	}

	message := strings.TrimSpace(strings.Join(kept, "\n"))
	if len(message) > maxMessage {
		message = message[:maxMessage] + "\n[message truncated]"
	}
	return message
}

func isNoise(line string) bool {
	trimmed := strings.TrimSpace(line)
	for _, noise := range noiseLines {
		if trimmed == noise {
			return true
		}
	}
	return false
}

// dedent removes up to n leading spaces.
func dedent(line string, n int) string {
	i := 0
	for i < n && i < len(line) && line[i] == ' ' {
		i++
	}
	return line[i:]
}

func lastLine(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		if line := strings.TrimSpace(lines[i]); line != "" && !isNoise(line) {
			if len(line) > maxMessage {
				line = line[:maxMessage]
			}
			return line
		}
	}
	return ""
}
