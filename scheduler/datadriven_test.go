package scheduler

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output in testdata/*.txt")

// The files in testdata/ are scripts of events. Each block is a command
// line, optional input lines, a line "----" and the expected output, which
// ends at a blank line. Lines starting with # between blocks are comments.
// The commands are documented in runCommand.

// epoch is the time of the first event of every script.
var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

type block struct {
	line    int
	command string
	input   []string
	output  []string
	// comments are the comment lines before the block, kept on rewrite.
	comments []string
}

func TestDataDriven(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no testdata/*.txt files")
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) {
			runScript(t, file)
		})
	}
}

func runScript(t *testing.T, file string) {
	blocks, err := parseScript(file)
	if err != nil {
		t.Fatal(err)
	}

	r := &scriptRunner{now: epoch}
	if r.s, err = New(Config{}); err != nil {
		t.Fatal(err)
	}

	failed := false
	for i := range blocks {
		b := &blocks[i]
		got := r.runCommand(b.command, b.input)
		if *rewrite {
			b.output = got
			continue
		}
		if strings.Join(got, "\n") != strings.Join(b.output, "\n") {
			t.Errorf("%s:%d: %s\ngot:\n%s\nwant:\n%s", file, b.line, b.command,
				strings.Join(got, "\n"), strings.Join(b.output, "\n"))
			failed = true
		}
	}

	if *rewrite {
		if err := writeScript(file, blocks); err != nil {
			t.Fatal(err)
		}
	}
	if failed {
		t.Log("run with -rewrite to accept the new output, then review the diff")
	}
}

func parseScript(file string) ([]block, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	var blocks []block
	var comments []string
	sc := bufio.NewScanner(f)
	lineNo := 0
	next := func() (string, bool) {
		if !sc.Scan() {
			return "", false
		}
		lineNo++
		return sc.Text(), true
	}

	for {
		line, ok := next()
		if !ok {
			break
		}
		if strings.HasPrefix(line, "#") {
			comments = append(comments, line)
			continue
		}
		if strings.TrimSpace(line) == "" {
			continue
		}

		b := block{line: lineNo, command: line, comments: comments}
		comments = nil
		for {
			l, ok := next()
			if !ok {
				return nil, fmt.Errorf("%s:%d: block without ----", file, b.line)
			}
			if l == "----" {
				break
			}
			b.input = append(b.input, l)
		}
		for {
			l, ok := next()
			if !ok || l == "" {
				break
			}
			b.output = append(b.output, l)
		}
		blocks = append(blocks, b)
	}
	return blocks, sc.Err()
}

func writeScript(file string, blocks []block) error {
	var sb strings.Builder
	for i, b := range blocks {
		if i > 0 {
			sb.WriteString("\n")
		}
		for _, c := range b.comments {
			sb.WriteString(c + "\n")
		}
		sb.WriteString(b.command + "\n")
		for _, l := range b.input {
			sb.WriteString(l + "\n")
		}
		sb.WriteString("----\n")
		for _, l := range b.output {
			sb.WriteString(l + "\n")
		}
	}
	return os.WriteFile(file, []byte(sb.String()), 0o644)
}

type scriptRunner struct {
	s   *Scheduler
	now time.Time
}

// runCommand runs one command and returns its output lines. Commands:
//
//	new [policy=P] [default-build-time=D] [max-job-length=N] [max-attempts=N]
//	    [peer-slack=D] [bandwidth=B] [shares=P:S,...] [urgency-margin=M]
//	                                replaces the Scheduler with a new one and
//	                                sets the clock back to the epoch
//	worker ID systems=S,... [features=F,...] [slots=N] [speed=X]
//	remove-worker ID
//	away WORKER                     the worker keeps its jobs, gets no new ones
//	back WORKER
//	reserve WORKER DELTA            slots taken by work outside the scheduler
//	graph EVAL [project=P]          input lines: PATH [<- IN...] [key=value...] [cached] [parallel]
//	                                keys: system, features, name, size, outputs,
//	                                peer-eta, held-until (durations after now),
//	                                held-for
//	started JOB
//	built JOB DRV
//	failed JOB DRV REASON...
//	finished JOB
//	store WORKER PATH...
//	advance D                       moves the clock by D and ticks
//	peer-building DRV eta=D         D after now
//	peer-built DRV
//	peer-gone DRV
//	release-holds WORKER [KEEP...]  ends the holds for WORKER except on KEEP
//	cancel EVAL
//	status DRV
//	history
func (r *scriptRunner) runCommand(command string, input []string) []string {
	fields := strings.Fields(command)
	name, args := fields[0], fields[1:]
	var decisions []Decision
	var err error

	switch name {
	case "new":
		var cfg Config
		if cfg, err = parseConfig(args); err == nil {
			r.s, err = New(cfg)
			r.now = epoch
		}
	case "worker":
		var w Worker
		if w, err = parseWorker(args); err == nil {
			decisions, err = r.s.AddWorker(w, r.now)
		}
	case "remove-worker":
		decisions, err = r.s.RemoveWorker(args[0], r.now)
	case "away":
		decisions, err = r.s.SetWorkerAway(args[0], true, r.now)
	case "back":
		decisions, err = r.s.SetWorkerAway(args[0], false, r.now)
	case "reserve":
		var delta int
		if delta, err = strconv.Atoi(args[1]); err == nil {
			decisions, err = r.s.ReserveSlots(args[0], delta, r.now)
		}
	case "graph":
		var g Graph
		if g, err = parseGraph(args, input, r.now); err == nil {
			decisions, err = r.s.AddGraph(g, r.now)
		}
	case "started":
		err = r.s.JobStarted(args[0], r.now)
	case "built":
		decisions, err = r.s.DerivationBuilt(args[0], args[1], r.now)
	case "failed":
		decisions, err = r.s.DerivationFailed(args[0], args[1], strings.Join(args[2:], " "), r.now)
	case "finished":
		decisions, err = r.s.JobFinished(args[0], r.now)
	case "store":
		err = r.s.ReportStore(args[0], args[1:])
	case "size":
		var size uint64
		if size, err = strconv.ParseUint(args[1], 10, 64); err == nil {
			r.s.SetOutputSize(args[0], size)
		}
	case "advance":
		var d time.Duration
		if d, err = time.ParseDuration(args[0]); err == nil {
			r.now = r.now.Add(d)
			decisions = r.s.Tick(r.now)
		}
	case "peer-building":
		kv := keyValues(args[1:])
		var d time.Duration
		if d, err = time.ParseDuration(kv["eta"]); err == nil {
			decisions = r.s.PeerBuilding(args[0], r.now.Add(d), r.now)
		}
	case "peer-built":
		decisions = r.s.PeerBuilt(args[0], r.now)
	case "peer-gone":
		decisions = r.s.PeerGone(args[0], r.now)
	case "release-holds":
		decisions = r.s.ReleaseHolds(args[0], args[1:], r.now)
	case "cancel":
		decisions, err = r.s.CancelEvaluation(args[0], r.now)
	case "status":
		return r.status(args[0])
	case "history":
		var out []string
		for _, h := range r.s.History() {
			out = append(out, fmt.Sprintf("%s %s %v samples=%d", h.PName, h.System, h.BuildTime, h.Samples))
		}
		return out
	default:
		err = fmt.Errorf("unknown command %q", name)
	}

	var out []string
	for _, d := range decisions {
		out = append(out, r.format(d))
	}
	if err != nil {
		out = append(out, "error: "+err.Error())
	}
	return out
}

func (r *scriptRunner) format(d Decision) string {
	switch d := d.(type) {
	case Assign:
		sc := d.Score
		s := fmt.Sprintf("assign %s to %s: %s (fetch=%d build=%.1fs total=%.1fs candidates=%d",
			d.JobID, d.WorkerID, strings.Join(d.DrvPaths, " "), sc.FetchBytes, sc.BuildSeconds, sc.Total, sc.Candidates)
		if sc.RunnerUp != "" {
			s += fmt.Sprintf(" runner-up=%s/%.1fs", sc.RunnerUp, sc.RunnerUpTotal)
		}
		if sc.Exclusive {
			s += " exclusive"
		}
		return s + ")"
	case Cancel:
		return fmt.Sprintf("cancel %s on %s", d.JobID, d.WorkerID)
	case Waiting:
		s := fmt.Sprintf("waiting %s: %s", d.DrvPath, d.Reason)
		if !d.Until.IsZero() {
			s += fmt.Sprintf(" until +%v", d.Until.Sub(epoch))
		}
		return s
	case HoldEnded:
		return fmt.Sprintf("hold-ended %s for %s expired=%t", d.DrvPath, d.WorkerID, d.Expired)
	case GaveUp:
		return fmt.Sprintf("gave-up %s: %s", d.DrvPath, d.Reason)
	case DependencyFailed:
		return fmt.Sprintf("dependency-failed %s: %s failed (evals %s)", d.DrvPath, d.FailedDep, strings.Join(d.EvalIDs, " "))
	case EvaluationDone:
		return fmt.Sprintf("eval-done %s: built=%d cached=%d failed=%d dependency-failed=%d",
			d.EvalID, d.Built, d.Cached, d.Failed, d.DependencyFailed)
	default:
		return fmt.Sprintf("unknown decision %T", d)
	}
}

func (r *scriptRunner) status(path string) []string {
	st, ok := r.s.Status(path)
	if !ok {
		return []string{"unknown"}
	}
	out := []string{fmt.Sprintf("state=%s reason=%s evals=%s", st.State, st.Reason, strings.Join(st.EvalIDs, ","))}
	if st.JobID != "" {
		out = append(out, fmt.Sprintf("job=%s worker=%s", st.JobID, st.WorkerID))
	}
	if st.FailedDep != "" || st.FailReason != "" {
		out = append(out, fmt.Sprintf("failed-dep=%q fail-reason=%q", st.FailedDep, st.FailReason))
	}
	out = append(out, fmt.Sprintf("estimate=%v priority=%v dependents=%.0f", st.EstimatedBuildTime, st.Priority, st.DependentCount))
	if !st.PostponedUntil.IsZero() {
		out = append(out, fmt.Sprintf("postponed-until=+%v", st.PostponedUntil.Sub(epoch)))
	}
	if st.HeldFor != "" {
		out = append(out, fmt.Sprintf("held-for=%s held-until=+%v", st.HeldFor, st.HeldUntil.Sub(epoch)))
	}
	return out
}

func keyValues(args []string) map[string]string {
	kv := make(map[string]string)
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		kv[k] = v
	}
	return kv
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func parseConfig(args []string) (Config, error) {
	var cfg Config
	var err error
	for k, v := range keyValues(args) {
		switch k {
		case "policy":
			cfg.Policy = Policy(v)
		case "default-build-time":
			cfg.DefaultBuildTime, err = time.ParseDuration(v)
		case "peer-slack":
			cfg.PeerSlack, err = time.ParseDuration(v)
		case "max-job-length":
			cfg.MaxJobLength, err = strconv.Atoi(v)
		case "max-attempts":
			cfg.MaxAttempts, err = strconv.Atoi(v)
		case "bandwidth":
			cfg.FetchBandwidth, err = strconv.ParseFloat(v, 64)
		case "urgency-margin":
			cfg.UrgencyMargin, err = strconv.ParseFloat(v, 64)
		case "shares":
			cfg.ProjectShares = make(map[string]float64)
			for _, item := range splitList(v) {
				p, share, _ := strings.Cut(item, ":")
				if cfg.ProjectShares[p], err = strconv.ParseFloat(share, 64); err != nil {
					return cfg, err
				}
			}
		default:
			return cfg, fmt.Errorf("unknown config key %q", k)
		}
		if err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

func parseWorker(args []string) (Worker, error) {
	w := Worker{ID: args[0], Slots: 1}
	var err error
	for k, v := range keyValues(args[1:]) {
		switch k {
		case "systems":
			w.Systems = splitList(v)
		case "features":
			w.Features = splitList(v)
		case "slots":
			w.Slots, err = strconv.Atoi(v)
		case "speed":
			w.Speed, err = strconv.ParseFloat(v, 64)
		default:
			return w, fmt.Errorf("unknown worker key %q", k)
		}
		if err != nil {
			return w, err
		}
	}
	return w, nil
}

func parseGraph(args, input []string, now time.Time) (Graph, error) {
	g := Graph{EvalID: args[0], Project: keyValues(args[1:])["project"]}
	for _, line := range input {
		fields := strings.Fields(line)
		d := Derivation{DrvPath: fields[0], System: "x86_64-linux"}
		inInputs := false
		for _, f := range fields[1:] {
			k, v, isKV := strings.Cut(f, "=")
			switch {
			case f == "<-":
				inInputs = true
			case f == "cached":
				d.Cached = true
				inInputs = false
			case f == "parallel":
				d.Parallel = true
				inInputs = false
			case isKV:
				inInputs = false
				switch k {
				case "system":
					d.System = v
				case "features":
					d.Features = splitList(v)
				case "name":
					d.Name = v
				case "outputs":
					d.Outputs = splitList(v)
				case "size":
					size, err := strconv.ParseUint(v, 10, 64)
					if err != nil {
						return g, err
					}
					d.OutputSize = size
				case "peer-eta":
					eta, err := time.ParseDuration(v)
					if err != nil {
						return g, err
					}
					d.PeerETA = now.Add(eta)
				case "held-for":
					d.HeldFor = v
				case "held-until":
					until, err := time.ParseDuration(v)
					if err != nil {
						return g, err
					}
					d.HeldUntil = now.Add(until)
				default:
					return g, fmt.Errorf("unknown derivation key %q", k)
				}
			case inInputs:
				d.InputDrvs = append(d.InputDrvs, f)
			default:
				return g, fmt.Errorf("unexpected word %q in %q", f, line)
			}
		}
		g.Derivations = append(g.Derivations, d)
	}
	return g, nil
}
