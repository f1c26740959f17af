package web

import (
	"net/http"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/scheduler/sim"
)

// getGraph writes the derivation graph of an evaluation in the JSON shape
// that `gradient sim --graph FILE` reads: one derivation per build, with
// its output size and, for a build that ran, its build time.
func (s *Server) getGraph(w http.ResponseWriter, r *http.Request) {
	id, ok := parseID(w, r)
	if !ok {
		return
	}
	e, err := s.cfg.DB.GetEvaluation(id)
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	if e.Status == db.EvalQueued || e.Status == db.EvalEvaluating {
		writeError(w, http.StatusConflict, "evaluation %d has no graph yet (status %s): wait until it builds", id, e.Status)
		return
	}
	bs, err := s.cfg.DB.ListBuilds(id)
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, GraphOf(bs))
}

// GraphOf returns the graph file of an evaluation's builds. A build's time
// is from its start to its end, for a build that succeeded; it is absent
// for the others. A cached build is marked cached.
func GraphOf(bs []db.Build) sim.GraphFile {
	g := sim.GraphFile{Derivations: make([]sim.FileDerivation, 0, len(bs))}
	for _, b := range bs {
		fd := sim.FileDerivation{
			DrvPath:    b.DrvPath,
			Name:       b.Name,
			System:     b.System,
			Features:   b.Features,
			Parallel:   b.ParallelBuilding,
			InputDrvs:  b.InputDrvs,
			Outputs:    b.Outputs,
			OutputSize: b.OutputSize,
			Cached:     b.Status == db.BuildCached,
		}
		if b.Status == db.BuildSucceeded && b.StartedAt != nil && b.FinishedAt != nil && b.FinishedAt.After(*b.StartedAt) {
			fd.BuildTimeSeconds = b.FinishedAt.Sub(*b.StartedAt).Seconds()
		}
		g.Derivations = append(g.Derivations, fd)
	}
	return g
}
