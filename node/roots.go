package node

import (
	"context"
	"fmt"

	"github.com/gradient-ci/gradient/internal/db"
)

// evaluationRoots lists the outputs that cache garbage collection keeps:
// those of each project's recent evaluations. It implements
// cache.RootSource.
type evaluationRoots struct {
	db *db.DB
}

// RecentOutputs returns the output paths of every build of the last n
// evaluations of each project, the inputs they were built from included.
func (r evaluationRoots) RecentOutputs(ctx context.Context, n int) ([]string, error) {
	projects, err := r.db.ListProjects("")
	if err != nil {
		return nil, fmt.Errorf("list projects: %w", err)
	}
	seen := map[string]bool{}
	var paths []string
	for _, p := range projects {
		evals, err := r.db.ListEvaluations(p.Org, p.Name, n)
		if err != nil {
			return nil, fmt.Errorf("list evaluations of %s/%s: %w", p.Org, p.Name, err)
		}
		for _, e := range evals {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			builds, err := r.db.ListBuilds(e.ID)
			if err != nil {
				return nil, fmt.Errorf("list builds of evaluation %d: %w", e.ID, err)
			}
			for _, b := range builds {
				for _, out := range b.Outputs {
					if out != "" && !seen[out] {
						seen[out] = true
						paths = append(paths, out)
					}
				}
			}
		}
	}
	return paths, nil
}
