package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/dgraph-io/badger/v4"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/internal/narcompress"
)

const (
	// maxListingEntries bounds the files of one .ls listing.
	maxListingEntries = 1 << 20
	// maxRealisationSize bounds an uploaded realisation file.
	maxRealisationSize = 64 << 10
)

// realisationPathRe matches the files nix keeps for content-addressed
// derivation outputs: realisations/<drv hash>!<output>.doi, and the
// build-trace-v2/ files of newer Nix versions.
var realisationPathRe = regexp.MustCompile(`^(realisations/[A-Za-z0-9:+=._!-]{1,300}\.doi|build-trace-v2/[A-Za-z0-9:+=._!/-]{1,300})$`)

func isRealisationPath(name string) bool {
	return realisationPathRe.MatchString(name)
}

func (s *Store) realisationKey(name string) []byte {
	return []byte(s.keyPrefix + "realisation/" + name)
}

// narInfoJSON is the ?json form of a narinfo, with the field names of
// nix path-info --json.
type narInfoJSON struct {
	Path         string   `json:"path"`
	NarHash      string   `json:"narHash"`
	NarSize      uint64   `json:"narSize"`
	References   []string `json:"references"`
	Deriver      string   `json:"deriver,omitempty"`
	Signatures   []string `json:"signatures"`
	CA           string   `json:"ca,omitempty"`
	URL          string   `json:"url"`
	Compression  string   `json:"compression"`
	DownloadHash string   `json:"downloadHash,omitempty"`
	DownloadSize uint64   `json:"downloadSize,omitempty"`
}

func (h *handler) serveNarInfoJSON(w http.ResponseWriter, r *http.Request, data []byte) {
	info, err := narinfo.Parse(bytes.NewReader(data))
	if err != nil {
		h.internalError(w, r, fmt.Errorf("read narinfo: stored narinfo is invalid: %w", err))
		return
	}

	storeDir := path.Dir(info.StorePath)
	out := narInfoJSON{
		Path:        info.StorePath,
		NarHash:     formatNix32(info.NarHash),
		NarSize:     info.NarSize,
		References:  []string{},
		Signatures:  []string{},
		CA:          info.CA,
		URL:         info.URL,
		Compression: info.Compression,
	}

	for _, ref := range info.References {
		out.References = append(out.References, storeDir+"/"+ref)
	}

	if info.Deriver != "" {
		out.Deriver = storeDir + "/" + info.Deriver
	}

	for _, sig := range info.Signatures {
		out.Signatures = append(out.Signatures, sig.String())
	}

	if info.FileHash != nil {
		out.DownloadHash = formatNix32(info.FileHash)
		out.DownloadSize = info.FileSize
	}

	body, err := json.Marshal(out)
	if err != nil {
		h.internalError(w, r, err)
		return
	}

	writeBody(w, r, "application/json", append(body, '\n'))
}

// listingNode is one entry of a .ls listing, in the layout nix writes.
type listingNode struct {
	Type       string                  `json:"type"`
	Entries    map[string]*listingNode `json:"entries,omitempty"`
	Size       *int64                  `json:"size,omitempty"`
	Executable bool                    `json:"executable,omitempty"`
	// NarOffset is the byte offset of a regular file's contents in the
	// uncompressed NAR, as nix writes it in its own listings.
	NarOffset *int64 `json:"narOffset,omitempty"`
	Target    string `json:"target,omitempty"`
}

// serveListing sends the file listing of a stored NAR, which nix fetches
// for nix store ls. It is computed from the NAR file on each request.
//
// NOTE: a pulled path whose NAR is not downloaded yet gets 404, because
// the listing is computed from the local NAR file and the upstream's
// listing is not fetched.
func (h *handler) serveListing(w http.ResponseWriter, r *http.Request, hashPart string) {
	info, err := h.store.NarInfo(r.Context(), hashPart)
	if errors.Is(err, ErrNotFound) {
		notFound(w)
		return
	}

	if err != nil {
		h.internalError(w, r, err)
		return
	}

	f, err := os.Open(filepath.Join(h.store.narDir, strings.TrimPrefix(info.URL, "nar/")))
	if errors.Is(err, fs.ErrNotExist) {
		notFound(w)
		return
	}

	if err != nil {
		h.internalError(w, r, err)
		return
	}

	defer f.Close()

	root, err := listNAR(info.Compression, f)
	if err != nil {
		h.internalError(w, r, fmt.Errorf("list NAR of %q: %w", info.StorePath, err))
		return
	}

	body, err := json.Marshal(struct {
		Version int          `json:"version"`
		Root    *listingNode `json:"root"`
	}{Version: 1, Root: root})
	if err != nil {
		h.internalError(w, r, err)
		return
	}

	writeBody(w, r, "application/json", body)
}

// listNAR reads a NAR file compressed with compression and returns its
// tree. It checks the archive with the same checker as uploads, which
// reports each node with its offset, so the NAR is read once.
func listNAR(compression string, file io.Reader) (*listingNode, error) {
	dec, err := narcompress.NewReader(compression, file)
	if err != nil {
		return nil, err
	}

	defer dec.Close()

	// directories holds the directories seen so far by path. Nodes arrive
	// in archive order, so a parent always comes before its entries.
	directories := map[string]*listingNode{}

	var (
		root  *listingNode
		count int
	)

	visit := func(n narNode) error {
		count++
		if count > maxListingEntries {
			return fmt.Errorf("more than %d entries", maxListingEntries)
		}

		node := &listingNode{Type: n.Type}

		switch n.Type {
		case "directory":
			node.Entries = map[string]*listingNode{}
			directories[n.Path] = node
		case "regular":
			size, offset := n.Size, n.Offset
			node.Size = &size
			node.NarOffset = &offset
			node.Executable = n.Executable
		case "symlink":
			node.Target = n.Target
		}

		if n.Path == "/" {
			root = node
			return nil
		}

		parent := directories[path.Dir(n.Path)]
		if parent == nil {
			return fmt.Errorf("entry %q has no parent directory", n.Path)
		}

		parent.Entries[path.Base(n.Path)] = node

		return nil
	}

	formatErr, err := walkNARStream(dec, visit)
	if err != nil {
		return nil, err
	}

	if formatErr != nil {
		return nil, formatErr
	}

	return root, nil
}

func (h *handler) serveRealisation(w http.ResponseWriter, r *http.Request, name string) {
	var data []byte

	err := h.store.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(h.store.realisationKey(name))
		if err != nil {
			return err
		}

		data, err = item.ValueCopy(nil)

		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		notFound(w)
		return
	}

	if err != nil {
		h.internalError(w, r, err)
		return
	}

	writeBody(w, r, "application/json", data)
}

// putRealisation stores an uploaded realisation file as it is, after
// checking that it is a JSON object.
func (s *Store) putRealisation(name string, body io.Reader) error {
	data, err := io.ReadAll(io.LimitReader(body, maxRealisationSize+1))
	if err != nil {
		return err
	}

	if len(data) > maxRealisationSize {
		return &uploadError{code: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("realisation larger than %d bytes", maxRealisationSize)}
	}

	var object map[string]json.RawMessage
	if err := json.Unmarshal(data, &object); err != nil {
		return badRequest("invalid realisation %q: not a JSON object: %v", name, err)
	}

	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(s.realisationKey(name), data) })
}
