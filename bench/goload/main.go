// Command goload drives an etcd v3 endpoint with etcd's own Go client
// (clientv3, the client Kubernetes' apiserver uses), so Tessera's router and a
// real etcd can be measured with the client that matters in production and
// not only with bench/loadgen.py's Python client.
//
//	goload --endpoints 127.0.0.1:2379 --conns 100 --clients 1000 --duration 5 \
//	    --workload put --key-size 8 --val-size 256 --key-space 10000 --prefixes /a/,/b/ --json
//
// Theory of operation.
//
// Shape, as etcd's `benchmark` tool (tools/benchmark/cmd/util.go,
// mustCreateClients): --conns clientv3.Client values are made, each with
// every endpoint and one gRPC connection per endpoint; client goroutine i
// uses connection i % conns. A goroutine sends its requests back to back, one
// in flight at a time. clientv3's own balancer spreads a connection's requests
// over its endpoints, and endpoint discovery (AutoSyncInterval) stays off: no
// request goes anywhere but the given endpoints.
//
// Workloads: put (a value of --val-size bytes), range (a linearizable Get of
// one key), range-serializable (the same with WithSerializable). The range
// workloads first write every key once (untimed), so reads find data.
//
// Keys are as bench/loadgen.py makes them: key i is prefixes[i % len] followed
// by i in hex, zero padded so the key has --key-size bytes where the prefix
// leaves room; each request picks a key uniformly at random (seeded per
// goroutine), so keys spread evenly over the prefixes (and so over the shards
// those prefixes map to).
//
// Timing, as bench/loadgen.py: with --duration, a warm-up (--warmup) precedes
// a measured window of --duration; a success that started and finished inside
// the window gives a latency sample, a failure that started inside it is
// counted under its gRPC code; requests per second = samples / window. With
// --total exactly that many requests are sent (no warm-up), and requests per
// second = successes / time to the last answer. --window-marks prints the
// lines "window-start" and "window-end" on stdout as the window opens and
// closes, so a caller can read the servers' CPU over exactly that window.
//
// Bounds: every count has a named limit below; each request has a deadline
// (--timeout); the whole run (connecting, prefill, load) stops at
// --max-seconds, and a --duration run's load also at warm-up + duration +
// timeout. A run that hits a limit fails (exit status 1); it never grows
// without bound. The first few errors are printed on stderr, all are counted.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes"
	"go.etcd.io/etcd/pkg/logutil"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// etcd's benchmark is run with 1,000 clients over 100 connections; ten times that is room enough.
	clientsMax = 10_000
	connsMax   = 1_000
	// Keys are made once, up front, as strings: a million keys of up to keySizeMax bytes stay under 300 MB.
	keySpaceMax = 1_000_000
	keySizeMax  = 256
	// etcd refuses requests above 1.5 MiB (--max-request-bytes); a larger value must be possible to see that error.
	valSizeMax  = 8 << 20
	durationMax = 10 * time.Minute
	// Each request sent may give one latency sample of 8 bytes: at most 160 MB of samples.
	requestsMax      = 20_000_000
	errorsPrintedMax = 5
	// Prefill (range workloads): this many puts in flight, as bench/loadgen.py's PREFILL_CONCURRENCY.
	prefillConcurrency = 64
	connectTimeout     = 10 * time.Second
)

var workloads = []string{"put", "range", "range-serializable"}

type config struct {
	endpoints   []string
	conns       int
	clients     int
	total       int
	duration    time.Duration
	warmup      time.Duration
	timeout     time.Duration
	maxSeconds  time.Duration
	workload    string
	keySize     int
	valSize     int
	keySpace    int
	prefixes    []string
	seed        int64
	json        bool
	windowMarks bool
	user        string // NAME:PASSWORD, as etcdctl's --user: each connection authenticates with it
}

func splitList(text string) []string {
	var items []string
	for _, item := range strings.Split(text, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	return items
}

func parseFlags(args []string) (config, error) {
	var cfg config
	flags := flag.NewFlagSet("goload", flag.ContinueOnError)
	endpoints := flags.String("endpoints", "127.0.0.1:2379", "comma-separated host:port list")
	flags.IntVar(&cfg.conns, "conns", 1, "gRPC connections (clientv3 clients)")
	flags.IntVar(&cfg.clients, "clients", 1, "concurrent client goroutines, spread over the connections")
	flags.IntVar(&cfg.total, "total", 0, "requests to send (instead of --duration)")
	duration := flags.Float64("duration", 10, "measured seconds (without --total)")
	warmup := flags.Float64("warmup", 0, "seconds of load before the measured window (without --total)")
	timeout := flags.Float64("timeout", 30, "per-request deadline, seconds")
	maxSeconds := flags.Float64("max-seconds", 600, "stop (and fail) after this many seconds, connecting included")
	flags.StringVar(&cfg.workload, "workload", "put", "put, range or range-serializable")
	flags.IntVar(&cfg.keySize, "key-size", 8, "key bytes, prefix included")
	flags.IntVar(&cfg.valSize, "val-size", 256, "value bytes")
	flags.IntVar(&cfg.keySpace, "key-space", 10_000, "distinct keys")
	prefixes := flags.String("prefixes", "/bench/", "comma-separated; key i has prefix i % count")
	flags.Int64Var(&cfg.seed, "seed", 0, "seed of the key choice and the value")
	flags.BoolVar(&cfg.json, "json", false, "print the figures as one JSON object")
	flags.BoolVar(&cfg.windowMarks, "window-marks", false, `print "window-start" and "window-end" lines on stdout`)
	flags.StringVar(&cfg.user, "user", "", "NAME:PASSWORD to authenticate as (auth enabled), as etcdctl's --user")
	if err := flags.Parse(args); err != nil {
		return cfg, err
	}
	if flags.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", flags.Args())
	}
	cfg.endpoints, cfg.prefixes = splitList(*endpoints), splitList(*prefixes)
	seconds := func(value float64) time.Duration { return time.Duration(value * float64(time.Second)) }
	cfg.duration, cfg.warmup = seconds(*duration), seconds(*warmup)
	cfg.timeout, cfg.maxSeconds = seconds(*timeout), seconds(*maxSeconds)
	return cfg, cfg.validate()
}

func (cfg config) validate() error {
	known := false
	for _, name := range workloads {
		known = known || cfg.workload == name
	}
	switch {
	case !known:
		return fmt.Errorf("unknown --workload %q; one of %v", cfg.workload, workloads)
	case len(cfg.endpoints) == 0 || len(cfg.prefixes) == 0:
		return errors.New("need an endpoint and a prefix")
	case cfg.conns < 1 || cfg.conns > connsMax:
		return fmt.Errorf("need 1 <= --conns <= %d", connsMax)
	case cfg.clients < 1 || cfg.clients > clientsMax:
		return fmt.Errorf("need 1 <= --clients <= %d", clientsMax)
	case cfg.total < 0 || cfg.total > requestsMax:
		return fmt.Errorf("need 0 <= --total <= %d", requestsMax)
	case cfg.total == 0 && (cfg.duration <= 0 || cfg.duration > durationMax):
		return fmt.Errorf("need a --total, or 0 < --duration <= %v", durationMax)
	case cfg.warmup < 0 || cfg.warmup > durationMax:
		return fmt.Errorf("need 0 <= --warmup <= %v", durationMax)
	case cfg.timeout <= 0 || cfg.timeout > durationMax || cfg.maxSeconds <= 0 || cfg.maxSeconds > durationMax:
		return fmt.Errorf("need 0 < --timeout, --max-seconds <= %v", durationMax)
	case cfg.total == 0 && cfg.warmup+cfg.duration >= cfg.maxSeconds:
		return errors.New("need --max-seconds > --warmup + --duration")
	case cfg.keySpace < 1 || cfg.keySpace > keySpaceMax:
		return fmt.Errorf("need 1 <= --key-space <= %d", keySpaceMax)
	case cfg.keySize < 1 || cfg.keySize > keySizeMax:
		return fmt.Errorf("need 1 <= --key-size <= %d", keySizeMax)
	case cfg.valSize < 0 || cfg.valSize > valSizeMax:
		return fmt.Errorf("need 0 <= --val-size <= %d", valSizeMax)
	}
	return nil
}

// makeKeys gives key i the prefix prefixes[i % len] and i in hex, as bench/loadgen.py's _key.
func makeKeys(prefixes []string, keySpace, keySize int) []string {
	keys := make([]string, keySpace)
	digitsMin := len(fmt.Sprintf("%x", keySpace-1))
	for i := range keys {
		prefix := prefixes[i%len(prefixes)]
		digits := keySize - len(prefix)
		if digits < digitsMin {
			digits = digitsMin
		}
		keys[i] = fmt.Sprintf("%s%0*x", prefix, digits, i)
	}
	return keys
}

// request is one workload's call; the answer is dropped.
type request func(ctx context.Context, client *clientv3.Client, key string) error

func workloadRequest(workload, value string) request {
	switch workload {
	case "put":
		return func(ctx context.Context, client *clientv3.Client, key string) error {
			_, err := client.Put(ctx, key, value)
			return err
		}
	case "range":
		return func(ctx context.Context, client *clientv3.Client, key string) error {
			_, err := client.Get(ctx, key)
			return err
		}
	case "range-serializable":
		return func(ctx context.Context, client *clientv3.Client, key string) error {
			_, err := client.Get(ctx, key, clientv3.WithSerializable())
			return err
		}
	}
	panic("validate() let an unknown workload through: " + workload)
}

// codeNames are gRPC codes as bench/loadgen.py counts them (Python's grpc.StatusCode names).
var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL",
	codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
}

// errorCode names an error's gRPC code; clientv3 turns etcd's known errors into rpctypes.EtcdError.
func errorCode(err error) string {
	code := codes.Unknown
	var etcdError rpctypes.EtcdError
	switch {
	case errors.As(err, &etcdError):
		code = etcdError.Code()
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	default:
		if answer, ok := status.FromError(err); ok {
			code = answer.Code()
		}
	}
	if name, ok := codeNames[code]; ok {
		return name
	}
	return code.String()
}

func connect(ctx context.Context, cfg config) ([]*clientv3.Client, error) {
	logConfig := logutil.DefaultZapLoggerConfig
	logConfig.Level = zap.NewAtomicLevelAt(zap.ErrorLevel) // not a warning per retried request
	conns := make([]*clientv3.Client, 0, cfg.conns)
	username, password, _ := strings.Cut(cfg.user, ":")
	for len(conns) < cfg.conns {
		client, err := clientv3.New(clientv3.Config{
			Endpoints:   cfg.endpoints,
			DialTimeout: connectTimeout,
			DialOptions: []grpc.DialOption{grpc.WithBlock()}, // fail here, not in every request
			LogConfig:   &logConfig,
			Context:     ctx, // the run's deadline ends its connections too
			Username:    username,
			Password:    password,
		})
		if err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("cannot connect to %s within %v: %w", strings.Join(cfg.endpoints, ","), connectTimeout, err)
		}
		conns = append(conns, client)
	}
	return conns, nil
}

func closeAll(conns []*clientv3.Client) {
	for _, client := range conns {
		client.Close()
	}
}

// prefill writes every key once, untimed, so reads find data.
func prefill(ctx context.Context, conns []*clientv3.Client, keys []string, value string, timeout time.Duration) error {
	var next int64 = -1
	failures := make(chan error, prefillConcurrency)
	var wg sync.WaitGroup
	for slot := 0; slot < prefillConcurrency; slot++ {
		wg.Add(1)
		go func(client *clientv3.Client) {
			defer wg.Done()
			for index := atomic.AddInt64(&next, 1); index < int64(len(keys)); index = atomic.AddInt64(&next, 1) {
				putCtx, cancel := context.WithTimeout(ctx, timeout)
				_, err := client.Put(putCtx, keys[index], value)
				cancel()
				if err != nil {
					failures <- fmt.Errorf("prefill of %q: %w", keys[index], err)
					return
				}
			}
		}(conns[slot%len(conns)])
	}
	wg.Wait()
	close(failures)
	return <-failures // nil when none failed
}

// window is where measuring starts and ends; with --total, from the start until the work ends.
type window struct{ start, end time.Time }

// clientResult is one goroutine's own figures: no sharing, no locks on the hot path.
type clientResult struct {
	samples    []time.Duration
	errors     map[string]int
	lastAnswer time.Time
}

type load struct {
	cfg         config
	conns       []*clientv3.Client
	keys        []string
	do          request
	issued      int64 // requests taken so far (atomic): --total's tickets, and the requestsMax bound
	overflowed  int32 // atomic: requestsMax reached in a --duration run
	errorsShown int32 // atomic: errors printed on stderr
}

func (l *load) client(ctx context.Context, slot int, win window, result *clientResult) {
	client := l.conns[slot%len(l.conns)]
	rng := rand.New(rand.NewSource(l.cfg.seed*7919 + int64(slot)))
	limit := int64(l.cfg.total)
	if limit == 0 {
		limit = requestsMax
	}
	for ctx.Err() == nil {
		if atomic.AddInt64(&l.issued, 1) > limit {
			if l.cfg.total == 0 {
				atomic.StoreInt32(&l.overflowed, 1)
			}
			return
		}
		began := time.Now()
		if !began.Before(win.end) {
			return
		}
		key := l.keys[rng.Intn(len(l.keys))]
		callCtx, cancel := context.WithTimeout(ctx, l.cfg.timeout)
		err := l.do(callCtx, client, key)
		cancel()
		finished := time.Now()
		measured := !began.Before(win.start)
		if err != nil {
			if ctx.Err() != nil { // the run's deadline, not the server: not a request's failure
				return
			}
			if measured {
				result.errors[errorCode(err)]++
			}
			if atomic.AddInt32(&l.errorsShown, 1) <= errorsPrintedMax {
				fmt.Fprintf(os.Stderr, "goload: %s %q: %s: %v\n", l.cfg.workload, key, errorCode(err), err)
			}
			continue
		}
		if measured && !finished.After(win.end) {
			result.samples = append(result.samples, finished.Sub(began))
			result.lastAnswer = finished
		}
	}
}

type report struct {
	Workload            string         `json:"workload"`
	Endpoints           []string       `json:"endpoints"`
	Clients             int            `json:"clients"`
	Connections         int            `json:"connections"`
	Requests            int            `json:"requests"`
	Errors              int            `json:"errors"`
	ErrorsByCode        map[string]int `json:"errors_by_code"`
	Seconds             float64        `json:"seconds"`
	OpsPerSecond        float64        `json:"ops_per_second"`
	LatencyMsAvg        *float64       `json:"latency_ms_avg"` // null without samples (JSON has no NaN)
	LatencyMsP50        *float64       `json:"latency_ms_p50"`
	LatencyMsP90        *float64       `json:"latency_ms_p90"`
	LatencyMsP99        *float64       `json:"latency_ms_p99"`
	LatencyMsP999       *float64       `json:"latency_ms_p999"`
	LatencyMsMax        *float64       `json:"latency_ms_max"`
	GeneratorCPUUsPerOp float64        `json:"generator_cpu_us_per_op"`
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		panic(err) // cannot fail for RUSAGE_SELF with a valid pointer
	}
	return float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
}

func mark(cfg config, edge string) float64 {
	if cfg.windowMarks {
		fmt.Println(edge)
	}
	return cpuSeconds()
}

func run(cfg config) (report, error) {
	whole, cancelWhole := context.WithTimeout(context.Background(), cfg.maxSeconds)
	defer cancelWhole()
	conns, err := connect(whole, cfg)
	if err != nil {
		return report{}, err
	}
	defer closeAll(conns)
	rng := rand.New(rand.NewSource(cfg.seed))
	value := make([]byte, cfg.valSize)
	rng.Read(value)
	l := &load{cfg: cfg, conns: conns, keys: makeKeys(cfg.prefixes, cfg.keySpace, cfg.keySize),
		do: workloadRequest(cfg.workload, string(value))}
	if cfg.workload != "put" {
		if err := prefill(whole, conns, l.keys, string(value), cfg.timeout); err != nil {
			return report{}, err
		}
	}

	// Past a --duration run's window, only requests in flight may finish, within their timeout.
	ctx, cancel := whole, context.CancelFunc(func() {})
	if cfg.total == 0 {
		ctx, cancel = context.WithTimeout(whole, cfg.warmup+cfg.duration+cfg.timeout+time.Second)
	}
	defer cancel()
	now := time.Now()
	win := window{start: now, end: now.Add(100 * 365 * 24 * time.Hour)}
	if cfg.total == 0 {
		win.start = now.Add(cfg.warmup)
		win.end = win.start.Add(cfg.duration)
	}
	results := make([]clientResult, cfg.clients)
	var wg sync.WaitGroup
	for slot := range results {
		results[slot].errors = map[string]int{}
		wg.Add(1)
		go func(slot int) {
			defer wg.Done()
			l.client(ctx, slot, win, &results[slot])
		}(slot)
	}
	var cpuStart, cpuEnd, seconds float64
	if cfg.total == 0 {
		time.Sleep(time.Until(win.start))
		cpuStart = mark(cfg, "window-start")
		time.Sleep(time.Until(win.end))
		cpuEnd = mark(cfg, "window-end")
		wg.Wait()
		seconds = cfg.duration.Seconds()
	} else {
		cpuStart = mark(cfg, "window-start")
		wg.Wait()
		cpuEnd = mark(cfg, "window-end")
	}
	if ctx.Err() != nil {
		return report{}, fmt.Errorf("stopped at the run's deadline (--max-seconds %v, or requests past --timeout)",
			cfg.maxSeconds)
	}
	if atomic.LoadInt32(&l.overflowed) != 0 {
		return report{}, fmt.Errorf("sent %d requests, the limit: shorten --duration", requestsMax)
	}

	var samples []time.Duration
	errorsByCode := map[string]int{}
	errorCount := 0
	var lastAnswer time.Time
	for _, result := range results {
		samples = append(samples, result.samples...)
		for code, count := range result.errors {
			errorsByCode[code] += count
			errorCount += count
		}
		if result.lastAnswer.After(lastAnswer) {
			lastAnswer = result.lastAnswer
		}
	}
	if cfg.total > 0 && len(samples) > 0 {
		seconds = lastAnswer.Sub(win.start).Seconds()
	}
	figures := report{
		Workload: cfg.workload, Endpoints: cfg.endpoints, Clients: cfg.clients, Connections: cfg.conns,
		Requests: len(samples), Errors: errorCount, ErrorsByCode: errorsByCode, Seconds: seconds,
		GeneratorCPUUsPerOp: (cpuEnd - cpuStart) * 1e6 / math.Max(1, float64(len(samples))),
	}
	if seconds > 0 {
		figures.OpsPerSecond = float64(len(samples)) / seconds
	}
	if len(samples) > 0 {
		sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
		ms := func(d time.Duration) *float64 {
			value := float64(d) / 1e6
			return &value
		}
		// Nearest rank, as bench/loadgen.py: the smallest sample with at least `fraction` of all at or below it.
		at := func(fraction float64) *float64 {
			rank := int(math.Ceil(float64(len(samples)) * fraction))
			if rank < 1 {
				rank = 1
			}
			return ms(samples[rank-1])
		}
		var sum time.Duration
		for _, sample := range samples {
			sum += sample
		}
		figures.LatencyMsAvg = ms(sum / time.Duration(len(samples)))
		figures.LatencyMsP50, figures.LatencyMsP90, figures.LatencyMsP99 = at(0.50), at(0.90), at(0.99)
		figures.LatencyMsP999, figures.LatencyMsMax = at(0.999), at(1.0)
	}
	return figures, nil
}

func (r report) text() string {
	value := func(ms *float64) string {
		if ms == nil {
			return "-"
		}
		return fmt.Sprintf("%.3f ms", *ms)
	}
	lines := []string{
		fmt.Sprintf("%s: %d clients, %d connections (clientv3)", r.Workload, r.Clients, r.Connections),
		fmt.Sprintf("  Total:        %.4f s, %d answers", r.Seconds, r.Requests),
		fmt.Sprintf("  Requests/sec: %.1f", r.OpsPerSecond),
		"  Average:      " + value(r.LatencyMsAvg),
		"  p50:          " + value(r.LatencyMsP50),
		"  p90:          " + value(r.LatencyMsP90),
		"  p99:          " + value(r.LatencyMsP99),
		"  Max:          " + value(r.LatencyMsMax),
		fmt.Sprintf("  Generator:    %.0f us CPU per request", r.GeneratorCPUUsPerOp),
	}
	if r.Errors == 0 {
		return strings.Join(append(lines, "Errors by code: none"), "\n")
	}
	lines = append(lines, "Errors by code:")
	codeList := make([]string, 0, len(r.ErrorsByCode))
	for code := range r.ErrorsByCode {
		codeList = append(codeList, code)
	}
	sort.Strings(codeList)
	for _, code := range codeList {
		lines = append(lines, fmt.Sprintf("  %s: %d", code, r.ErrorsByCode[code]))
	}
	return strings.Join(lines, "\n")
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "goload:", err)
		os.Exit(2)
	}
	figures, err := run(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goload:", err)
		os.Exit(1)
	}
	if !cfg.json {
		fmt.Println(figures.text())
		return
	}
	encoded, err := json.Marshal(figures)
	if err != nil {
		panic(err) // every field is finite or null
	}
	fmt.Println(string(encoded))
}
