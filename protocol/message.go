package protocol

// Version is the protocol version this build speaks. A node rejects a
// Hello with any other version.
const Version = 1

// Limits on what one frame may carry. A frame larger than MaxFrameSize
// closes the connection, and so does a message whose fields break the
// limits below: both come from the other side and are untrusted.
const (
	// MaxFrameSize bounds one encoded message in bytes. An EvalResult of
	// a large flake is the biggest message: about 300 bytes per
	// derivation, so 32 MiB leaves room for 100,000 derivations.
	MaxFrameSize = 32 << 20
	// MaxChunkSize bounds the data of one NARChunk and one LogChunk.
	MaxChunkSize = 256 << 10
	// MaxPathLength bounds store paths, attribute paths, systems,
	// features and other strings in bytes.
	MaxPathLength = 4096
	// MaxTextLength bounds error messages and reasons in bytes.
	MaxTextLength = 64 << 10
	// MaxQueryPaths bounds the paths of one PathQuery.
	MaxQueryPaths = 100_000
	// MaxUploadSize bounds the compressed size of one NAR upload.
	MaxUploadSize = 64 << 30
	// MaxDetachedBuilds bounds Hello.DetachedBuilds.
	MaxDetachedBuilds = 4096
)

// Type names the kind of a message on the wire.
type Type string

// The message types. The comment of each message type says which side
// sends it; docs/protocol.md gives the order of a session.
const (
	TypeHello      Type = "hello"
	TypeWelcome    Type = "welcome"
	TypeReject     Type = "reject"
	TypeHeartbeat  Type = "heartbeat"
	TypeJobOffer   Type = "job_offer"
	TypeJobAccept  Type = "job_accept"
	TypeJobDecline Type = "job_decline"
	TypeJobAbort   Type = "job_abort"
	TypeLogChunk   Type = "log_chunk"
	TypeJobResult  Type = "job_result"
	TypeJobBuilt   Type = "job_built"
	TypePathQuery  Type = "path_query"
	TypePathAnswer Type = "path_answer"
	TypeNARBegin   Type = "nar_begin"
	TypeNAROffset  Type = "nar_offset"
	TypeNARChunk   Type = "nar_chunk"
	TypeNARStored  Type = "nar_stored"
)

// Message is one of the message types of this file. Encode and Decode
// convert it to and from a frame.
type Message interface {
	// Type returns the message's type tag.
	Type() Type
	// validate checks the fields of a decoded message against the limits.
	validate() error
}

// Capability is something a worker offers to do.
type Capability string

// Capabilities a worker announces in its Hello.
const (
	// CapEval means the worker evaluates flakes.
	CapEval Capability = "eval"
	// CapBuild means the worker builds derivations.
	CapBuild Capability = "build"
	// CapCache means the worker answers PathQuery messages about its store.
	CapCache Capability = "cache"
)

// Hello is the first message of a session, sent by the worker.
type Hello struct {
	// Version is the protocol version the worker speaks.
	Version int `cbor:"version"`
	// Capabilities lists what the worker does.
	Capabilities []Capability `cbor:"capabilities"`
	// Systems are the platforms it builds for, such as "x86_64-linux".
	Systems []string `cbor:"systems"`
	// Features are the system features it supports, such as "kvm".
	Features []string `cbor:"features,omitempty"`
	// MaxJobs is how many jobs it runs at once, 1 to 1024.
	MaxJobs int `cbor:"max_jobs"`
	// CPUs is the number of logical CPUs of the machine.
	CPUs int `cbor:"cpus"`
	// MemoryBytes is the machine's total memory.
	MemoryBytes uint64 `cbor:"memory_bytes"`
	// Instance identifies the worker process, at random, so that the node
	// can tell a reconnect of the same process from a second process with
	// the same token. Empty from workers that do not send it.
	Instance string `cbor:"instance,omitempty"`
	// DetachedBuilds lists the .drv store paths of builds that this
	// worker process ran for an earlier connection and whose result no
	// node received. Some still run after that connection ended, others
	// succeeded after it ended, so their outputs are in the worker's
	// store. A node that restarted during such a build gives it back to
	// this worker. It has at most MaxDetachedBuilds entries, and is empty
	// from workers that do not send it.
	DetachedBuilds []string `cbor:"detached_builds,omitempty"`
}

// Has reports whether the worker announced c.
func (h Hello) Has(c Capability) bool {
	for _, x := range h.Capabilities {
		if x == c {
			return true
		}
	}
	return false
}

// Welcome accepts a Hello. The node sends it once.
type Welcome struct {
	// Version is the protocol version of the session.
	Version int `cbor:"version"`
	// WorkerID is the name the node knows the worker by.
	WorkerID string `cbor:"worker_id"`
	// HeartbeatMillis is how often the worker sends a Heartbeat.
	HeartbeatMillis int64 `cbor:"heartbeat_ms"`
	// LeaseMillis is how long the node waits for any message before it
	// drops the worker and queues its jobs again.
	LeaseMillis int64 `cbor:"lease_ms"`
	// CachePath is the path of the node's binary cache on the node's
	// HTTP server, such as "/cache/main". Workers substitute from it.
	CachePath string `cbor:"cache_path"`
	// CachePublicKey verifies the cache's narinfo signatures, in Nix's
	// "name:base64" form.
	CachePublicKey string `cbor:"cache_public_key"`
	// JobBuilt is set when the node accepts JobBuilt messages. Nodes
	// before it leave it unset, and the worker sends none to them.
	JobBuilt bool `cbor:"job_built,omitempty"`
}

// Reject refuses a Hello, sent by the node before it closes the
// connection.
type Reject struct {
	// Reason says why, such as an unsupported protocol version.
	Reason string `cbor:"reason"`
}

// Heartbeat tells the node that the worker is alive, sent by the worker
// every Welcome.HeartbeatMillis.
type Heartbeat struct {
	// RunningJobs is the number of jobs the worker runs.
	RunningJobs int `cbor:"running_jobs"`
	// Load1 is the one-minute load average of the machine.
	Load1 float64 `cbor:"load1"`
	// FreeDiskBytes is the free space of the file system of the store.
	FreeDiskBytes uint64 `cbor:"free_disk_bytes"`
}

// JobOffer offers a job to the worker, sent by the node. Exactly one of
// Eval and Build is set. The worker answers with JobAccept or JobDecline.
type JobOffer struct {
	// Job identifies the job within the session; never 0.
	Job   uint64        `cbor:"job"`
	Eval  *EvalRequest  `cbor:"eval,omitempty"`
	Build *BuildRequest `cbor:"build,omitempty"`
}

// JobAccept says the worker started the job; JobResult follows.
type JobAccept struct {
	Job uint64 `cbor:"job"`
}

// JobDecline says the worker will not run the job, such as when all its
// slots are busy.
type JobDecline struct {
	Job    uint64 `cbor:"job"`
	Reason string `cbor:"reason"`
}

// JobAbort asks the worker to stop a job, sent by the node. The worker
// may still send a JobResult, which the node ignores.
type JobAbort struct {
	Job uint64 `cbor:"job"`
}

// LogChunk is output of a running job: the build log, or progress lines
// of an evaluation. Chunks of one job arrive in order and before its
// JobResult.
type LogChunk struct {
	Job  uint64 `cbor:"job"`
	Data []byte `cbor:"data"`
}

// JobBuilt reports that nix built the derivation of a build job and its
// outputs are in the worker's store, sent by the worker before it uploads
// them, and only when Welcome.JobBuilt is set. The JobResult follows once
// the upload ended. From then on the job no longer counts against the
// worker's slots, so the node may offer the next link of a chain at once.
type JobBuilt struct {
	Job uint64 `cbor:"job"`
}

// JobResult ends a job, sent by the worker. Exactly one of Eval, Build and
// Error is set.
type JobResult struct {
	Job   uint64       `cbor:"job"`
	Eval  *EvalResult  `cbor:"eval,omitempty"`
	Build *BuildResult `cbor:"build,omitempty"`
	Error *JobError    `cbor:"error,omitempty"`
}

// JobError is a job that failed. It is also the error that a node's
// RemoteWorker returns for it, unless BuildFailed makes it a *BuildError.
type JobError struct {
	// BuildFailed is set when nix ran the builder and it failed, as
	// opposed to a fault of the worker such as a missing nix binary.
	BuildFailed bool `cbor:"build_failed,omitempty"`
	// Fault is set when the job failed because of the worker, see
	// ErrWorkerFault.
	Fault bool `cbor:"fault,omitempty"`
	// Message is nix's or the worker's message.
	Message string `cbor:"message"`

	// declined marks the error the node makes of a JobDecline. It never
	// travels on the wire.
	declined bool
}

func (e *JobError) Error() string { return e.Message }

// Is makes a JobError with Fault match ErrWorkerFault.
func (e *JobError) Is(target error) bool { return e.Fault && target == ErrWorkerFault }

// PathQuery asks the other side which of Paths it holds: the node asks a
// worker about its store, and a worker asks the node about its cache
// before it uploads. The answer is a PathAnswer with the same ID.
type PathQuery struct {
	// ID identifies the query among those of its sender.
	ID uint64 `cbor:"id"`
	// Job is the job a worker's query belongs to, 0 for none.
	Job   uint64   `cbor:"job,omitempty"`
	Paths []string `cbor:"paths"`
}

// PathAnswer answers a PathQuery.
type PathAnswer struct {
	ID uint64 `cbor:"id"`
	// Have lists the queried paths the answering side holds.
	Have []string `cbor:"have"`
	// MissingNarSize is the sum of the NAR sizes of the queried paths
	// the answering side lacks, as far as it knows them: the bytes that
	// fetching them costs. Zero when unknown.
	MissingNarSize uint64 `cbor:"missing_nar_size,omitempty"`
	// Error is set when the answering side could not look the paths up.
	Error string `cbor:"error,omitempty"`
}

// NARBegin starts the upload of one store path's NAR, sent by the worker.
// The NAR is compressed with zstd by the worker before it is sent; File
// describes the compressed bytes. The node answers with NAROffset.
type NARBegin struct {
	// Upload identifies the upload within the session; never 0.
	Upload uint64 `cbor:"upload"`
	// Job is the job the upload belongs to, 0 for none.
	Job  uint64   `cbor:"job,omitempty"`
	Info PathInfo `cbor:"info"`
	// Compression is "zstd", the only one defined.
	Compression string `cbor:"compression"`
	// FileSize is the size of the compressed NAR in bytes.
	FileSize uint64 `cbor:"file_size"`
	// FileHash is the SHA-256 of the compressed NAR in lower-case hex.
	// Together with Info.StorePath it names the partial upload that a
	// later NARBegin resumes.
	FileHash string `cbor:"file_hash"`
}

// NAROffset tells the worker where to continue an upload: at Offset bytes
// into the compressed NAR, which the node kept from an earlier, cut upload,
// or at 0. With Have set the node already holds the path and the worker
// sends nothing more.
type NAROffset struct {
	Upload uint64 `cbor:"upload"`
	Offset uint64 `cbor:"offset"`
	Have   bool   `cbor:"have,omitempty"`
}

// NARChunk carries compressed NAR bytes at Offset, sent by the worker in
// order until Offset+len(Data) reaches NARBegin.FileSize.
type NARChunk struct {
	Upload uint64 `cbor:"upload"`
	Offset uint64 `cbor:"offset"`
	Data   []byte `cbor:"data"`
}

// NARStored ends an upload, sent by the node after it checked the NAR
// against Info.NarHash and Info.NarSize and stored it, or failed to.
type NARStored struct {
	Upload uint64 `cbor:"upload"`
	// Error is empty on success.
	Error string `cbor:"error,omitempty"`
}

func (*Hello) Type() Type      { return TypeHello }
func (*Welcome) Type() Type    { return TypeWelcome }
func (*Reject) Type() Type     { return TypeReject }
func (*Heartbeat) Type() Type  { return TypeHeartbeat }
func (*JobOffer) Type() Type   { return TypeJobOffer }
func (*JobAccept) Type() Type  { return TypeJobAccept }
func (*JobDecline) Type() Type { return TypeJobDecline }
func (*JobAbort) Type() Type   { return TypeJobAbort }
func (*LogChunk) Type() Type   { return TypeLogChunk }
func (*JobResult) Type() Type  { return TypeJobResult }
func (*JobBuilt) Type() Type   { return TypeJobBuilt }
func (*PathQuery) Type() Type  { return TypePathQuery }
func (*PathAnswer) Type() Type { return TypePathAnswer }
func (*NARBegin) Type() Type   { return TypeNARBegin }
func (*NAROffset) Type() Type  { return TypeNAROffset }
func (*NARChunk) Type() Type   { return TypeNARChunk }
func (*NARStored) Type() Type  { return TypeNARStored }

// newMessage returns a zero message of type t, or nil for an unknown type.
func newMessage(t Type) Message {
	switch t {
	case TypeHello:
		return &Hello{}
	case TypeWelcome:
		return &Welcome{}
	case TypeReject:
		return &Reject{}
	case TypeHeartbeat:
		return &Heartbeat{}
	case TypeJobOffer:
		return &JobOffer{}
	case TypeJobAccept:
		return &JobAccept{}
	case TypeJobDecline:
		return &JobDecline{}
	case TypeJobAbort:
		return &JobAbort{}
	case TypeLogChunk:
		return &LogChunk{}
	case TypeJobResult:
		return &JobResult{}
	case TypeJobBuilt:
		return &JobBuilt{}
	case TypePathQuery:
		return &PathQuery{}
	case TypePathAnswer:
		return &PathAnswer{}
	case TypeNARBegin:
		return &NARBegin{}
	case TypeNAROffset:
		return &NAROffset{}
	case TypeNARChunk:
		return &NARChunk{}
	case TypeNARStored:
		return &NARStored{}
	}
	return nil
}
