package narinfo

import (
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixhash"
)

// ContentType is the media type of a .narinfo file.
const ContentType = "text/x-nix-narinfo"

// Format returns info as a .narinfo file in the layout Nix writes: one
// "Key: value" line per field, each ending in "\n", hashes in nix32 with
// an "<algo>:" prefix, and FileHash, FileSize, Deriver, System and CA
// only when set. It does not check info; use Parse on the output for that.
func Format(info *NarInfo) []byte {
	var b strings.Builder

	writeLine(&b, "StorePath", info.StorePath)
	writeLine(&b, "URL", info.URL)
	writeLine(&b, "Compression", info.Compression)

	if info.FileHash != nil {
		writeLine(&b, "FileHash", formatHash(&info.FileHash.Hash))
	}

	if info.FileSize != 0 {
		writeLine(&b, "FileSize", strconv.FormatUint(info.FileSize, 10))
	}

	if info.NarHash != nil {
		writeLine(&b, "NarHash", formatHash(&info.NarHash.Hash))
	}

	writeLine(&b, "NarSize", strconv.FormatUint(info.NarSize, 10))
	writeLine(&b, "References", strings.Join(info.References, " "))

	if info.Deriver != "" {
		writeLine(&b, "Deriver", info.Deriver)
	}

	if info.System != "" {
		writeLine(&b, "System", info.System)
	}

	for _, sig := range info.Signatures {
		writeLine(&b, "Sig", sig.String())
	}

	if info.CA != "" {
		writeLine(&b, "CA", info.CA)
	}

	return []byte(b.String())
}

func writeLine(b *strings.Builder, key, value string) {
	b.WriteString(key)
	b.WriteString(": ")
	b.WriteString(value)
	b.WriteByte('\n')
}

func formatHash(h *nixhash.Hash) string {
	return h.Format(nixhash.NixBase32, true)
}
