package web

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/scheduler"
)

// WaitExplainer computes why unfinished builds wait, from the node's live
// scheduler state. The node implements it.
type WaitExplainer interface {
	// ExplainWaits returns the wait of each derivation of drvPaths in
	// evaluation evalID whose build the node is scheduling, by .drv path.
	// A wait with empty Text means the build is not held back. A
	// derivation left out of the map keeps its stored wait, as do all of
	// them when it returns an error, such as when ctx ends first.
	ExplainWaits(ctx context.Context, evalID uint64, drvPaths []string) (map[string]db.Wait, error)
}

// waitQueryTimeout bounds the wait for the node's explanation of the
// waits of one evaluation's builds. When it passes, the response has the
// stored waits.
const waitQueryTimeout = 2 * time.Second

// maxDerivationBuilds bounds the builds that GET /builds?drv_path= returns.
const maxDerivationBuilds = 1000

// describeBuilds fills in the fields of bs that the API computes on each
// request: the live wait of every unfinished build, and the build ID of
// each failed dependency. bs may hold builds of several evaluations.
func (s *Server) describeBuilds(ctx context.Context, bs []db.Build) {
	byEval := map[uint64][]int{}
	for i := range bs {
		byEval[bs[i].EvalID] = append(byEval[bs[i].EvalID], i)
	}
	for evalID, idx := range byEval {
		s.explainWaits(ctx, evalID, bs, idx)
		s.findFailedDependencies(evalID, bs, idx)
	}
}

// explainWaits sets the wait of each unfinished build bs[i], i in idx,
// of one evaluation from the node's scheduler.
func (s *Server) explainWaits(ctx context.Context, evalID uint64, bs []db.Build, idx []int) {
	if s.cfg.Waits == nil {
		return
	}
	var paths []string
	for _, i := range idx {
		if !bs[i].Status.Finished() {
			paths = append(paths, bs[i].DrvPath)
		}
	}
	if len(paths) == 0 {
		return
	}

	ctx, cancel := context.WithTimeout(ctx, waitQueryTimeout)
	defer cancel()
	waits, err := s.cfg.Waits.ExplainWaits(ctx, evalID, paths)
	if err != nil {
		s.log.Warn("explaining the waits of builds failed; returning the stored waits", "evaluation_id", evalID, "builds", len(paths), "err", err)
		return
	}
	for _, i := range idx {
		if w, ok := waits[bs[i].DrvPath]; ok && !bs[i].Status.Finished() {
			bs[i].SetWait(w)
		}
	}
}

// findFailedDependencies sets FailedDependencyBuildID of each build bs[i],
// i in idx, of one evaluation whose input failed.
func (s *Server) findFailedDependencies(evalID uint64, bs []db.Build, idx []int) {
	inList := map[string]uint64{}
	for _, i := range idx {
		inList[bs[i].DrvPath] = bs[i].ID
	}
	for _, i := range idx {
		dep := bs[i].FailedDependency
		if dep == "" || bs[i].FailedDependencyBuildID != 0 {
			continue
		}
		if id, ok := inList[dep]; ok {
			bs[i].FailedDependencyBuildID = id
			continue
		}
		b, err := s.cfg.DB.FindBuild(evalID, dep)
		if err != nil {
			s.log.Debug("build of a failed dependency not found", "evaluation_id", evalID, "drv_path", dep, "err", err)
			continue
		}
		bs[i].FailedDependencyBuildID = b.ID
	}
}

// listDerivationBuilds writes the builds of the derivation in ?drv_path=,
// newest first, at most ?limit= of them.
func (s *Server) listDerivationBuilds(w http.ResponseWriter, r *http.Request) {
	drvPath := r.URL.Query().Get("drv_path")
	if !strings.HasPrefix(drvPath, "/") || !strings.HasSuffix(drvPath, ".drv") || len(drvPath) > scheduler.MaxPathLength {
		writeError(w, http.StatusBadRequest, "drv_path %q is invalid: give the absolute store path of a .drv file", drvPath)
		return
	}
	limit := 20
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxDerivationBuilds {
			writeError(w, http.StatusBadRequest, "limit %q is invalid: give a number from 1 to %d", v, maxDerivationBuilds)
			return
		}
		limit = n
	}

	bs, err := s.cfg.DB.BuildsOfDerivation(drvPath, limit)
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	s.describeBuilds(r.Context(), bs)
	writeJSON(w, http.StatusOK, nonNil(bs))
}
