package cache

import (
	"net/http"
)

func (h *handler) serveUpload(w http.ResponseWriter, r *http.Request, name string) {
	if h.opts.Authorize == nil || !h.opts.Authorize(r) {
		w.Header().Set("WWW-Authenticate", `Basic realm="gradient cache `+h.store.cfg.Name+`"`)
		httpError(w, http.StatusUnauthorized, "upload requires a valid token, sent as the HTTP Basic password")
		return
	}

	httpError(w, http.StatusNotImplemented, "uploads are not implemented yet")
}
