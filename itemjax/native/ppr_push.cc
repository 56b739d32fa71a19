// Approximate Personalized PageRank by forward push (Andersen, Chung & Lang, FOCS 2006, "Local graph
// partitioning using PageRank vectors"), in the non-lazy form PPRGo uses, and the PPR hard-negative
// window ranked from it. Plain C ABI, called with ctypes from itemjax/native/ppr_push.py.
//
// Graph: an undirected graph given as CSR (indptr int64 [n_nodes + 1], indices int32 [nnz], both
// directions of every edge stored, no weights); deg(v) = indptr[v+1] - indptr[v]. For the PPR tables
// it is the bipartite training graph A = [[0, R], [R^T, 0]], users first (nodes 0 .. n_users-1), then
// items (node n_users + i is item i). Random walk W = D^-1 A; the PPR vector of a source s solves
//
//     pi_s = alpha e_s + (1 - alpha) W^T pi_s.
//
// Forward push from s: p = 0, r = e_s; while some node v has r(v) > eps * deg(v):
//     p(v) += alpha r(v);  r(w) += (1 - alpha) r(v) / deg(v) for each neighbour w;  r(v) = 0.
// An isolated node (deg 0) pushes any positive residual (only the source can hold one) and its
// (1 - alpha) share is absorbed, as the zero rows of W absorb a walker. Invariant: pi_s = p +
// sum_v r(v) pi_v, and by the symmetry deg(v) pi_v(w) = deg(w) pi_w(v) of an undirected graph, at
// termination 0 <= pi_s(w) - p(w) <= eps * deg(w) for every node w. Work per source is local: each
// push of v removes at least alpha * eps * deg(v) residual mass out of 1, so the edges scanned sum
// to at most 1 / (alpha * eps), whatever the graph's size.
//
// Order: nodes over the threshold wait in a FIFO queue (a node is queued at most once at a time; its
// residual keeps growing while it waits and is pushed in full when it leaves). Neighbours are visited
// in CSR order, so the result is a deterministic function of the CSR arrays.
//
// Precision: p and r are double. The residual test compares r(v) against eps * deg(v), small at the
// eps this is used with (1e-4 .. 1e-6), while r(v) and p(v) are sums of many small shares; in float32
// (24-bit mantissa) those sums carry relative errors of ~1e-4 after thousands of additions, enough to
// reorder near-tied candidates and to blur the error bound above, which the tests check. double costs
// 16 bytes per node per thread (Gowalla, 70,839 nodes: 1.1 MB), and only touched entries are visited.
//
// Threads: sources are handed out in chunks of kSourcesPerGrab by an atomic counter (costs vary
// with the source's neighbourhood); each thread owns dense p / r / flag arrays over all nodes, reset
// after every source through its touched list, so a source costs O(its pushes), not O(n_nodes).
// Each output row is computed by one thread alone, so results do not depend on the thread count.
// threads <= 0: ITEMJAX_NATIVE_THREADS when set to a positive integer, else the CPUs this process
// may run on.
//
// Return codes: 0 success, 1 invalid argument (nothing written), 2 out of memory, 3 other failure.

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <new>
#include <thread>
#include <vector>

#include "threads.h"  // AvailableCpus, EnvThreads, kMaxThreads

#if defined(_WIN32)
#define ITEMJAX_EXPORT extern "C" __declspec(dllexport)
#else
#define ITEMJAX_EXPORT extern "C" __attribute__((visibility("default")))
#endif

namespace {

constexpr int32_t kPad = -1;             // "no candidate in this slot" (itemjax.graph.ppr.PAD)
constexpr int64_t kSourcesPerGrab = 4;   // sources a thread takes from the shared counter at once

enum Status : int { kOk = 0, kInvalid = 1, kNoMemory = 2, kFailed = 3 };

struct Graph {
  const int64_t* indptr;
  const int32_t* indices;
  int64_t n_nodes;

  int64_t Degree(int64_t v) const { return indptr[v + 1] - indptr[v]; }
};

// Structural checks of the CSR arrays, O(n_nodes + nnz): monotone indptr from 0, indices in range.
bool ValidGraph(const Graph& g) {
  if (g.n_nodes < 0 || g.indptr == nullptr || g.indptr[0] != 0) return false;
  for (int64_t v = 0; v < g.n_nodes; ++v) {
    if (g.indptr[v + 1] < g.indptr[v]) return false;
  }
  if (g.n_nodes > 0 && g.indices == nullptr && g.indptr[g.n_nodes] > 0) return false;
  for (int64_t j = 0; j < g.indptr[g.n_nodes]; ++j) {
    if (g.indices[j] < 0 || g.indices[j] >= g.n_nodes) return false;
  }
  return true;
}

// One thread's push state: dense arrays over all nodes, zero between sources.
class Pusher {
 public:
  explicit Pusher(int64_t n_nodes)
      : p_(static_cast<size_t>(n_nodes), 0.0),
        r_(static_cast<size_t>(n_nodes), 0.0),
        touched_flag_(static_cast<size_t>(n_nodes), 0),
        queued_(static_cast<size_t>(n_nodes), 0),
        queue_(static_cast<size_t>(std::max<int64_t>(n_nodes, 1))) {}

  // Forward push from `source` (module comment); afterwards Touched() lists every node whose p or r
  // became nonzero (in order of first touch) and P() holds the estimates.
  void Run(const Graph& g, int64_t source, double alpha, double eps) {
    Reset();
    const double keep = 1.0 - alpha;
    const size_t capacity = queue_.size();
    size_t head = 0, count = 0;
    Touch(source);
    r_[source] = 1.0;
    if (r_[source] > eps * static_cast<double>(g.Degree(source))) {
      queue_[0] = static_cast<int32_t>(source);
      queued_[source] = 1;
      count = 1;
    }
    while (count > 0) {
      const int64_t v = queue_[head];
      head = head + 1 == capacity ? 0 : head + 1;
      --count;
      queued_[v] = 0;
      const double rv = r_[v];
      r_[v] = 0.0;
      p_[v] += alpha * rv;
      const int64_t begin = g.indptr[v], end = g.indptr[v + 1];
      if (end == begin) continue;  // isolated: the (1 - alpha) share is absorbed
      const double share = keep * rv / static_cast<double>(end - begin);
      for (int64_t j = begin; j < end; ++j) {
        const int32_t w = g.indices[j];
        Touch(w);
        const double rw = r_[w] + share;
        r_[w] = rw;
        if (!queued_[w] && rw > eps * static_cast<double>(g.Degree(w))) {
          size_t tail = head + count;
          if (tail >= capacity) tail -= capacity;
          queue_[tail] = w;  // at most one entry per node: count <= n_nodes = capacity
          queued_[w] = 1;
          ++count;
        }
      }
    }
  }

  const std::vector<int32_t>& Touched() const { return touched_; }
  const double* P() const { return p_.data(); }
  const double* R() const { return r_.data(); }
  std::vector<int32_t>& Scratch() { return scratch_; }  // the caller's candidate list, reused across sources
  // the caller's per-node estimates (dense, over all nodes; only the candidates' entries are meaningful)
  std::vector<double>& Estimate() {
    if (estimate_.size() != p_.size()) estimate_.assign(p_.size(), 0.0);
    return estimate_;
  }

 private:
  void Touch(int64_t v) {
    if (!touched_flag_[v]) {
      touched_flag_[v] = 1;
      touched_.push_back(static_cast<int32_t>(v));
    }
  }

  // Zero what the previous source touched: O(touched), not O(n_nodes).
  void Reset() {
    for (const int32_t v : touched_) {
      p_[v] = 0.0;
      r_[v] = 0.0;
      touched_flag_[v] = 0;
    }
    touched_.clear();
  }

  std::vector<double> p_, r_;
  std::vector<uint8_t> touched_flag_, queued_;
  std::vector<int32_t> queue_;  // FIFO ring buffer
  std::vector<int32_t> touched_;
  std::vector<int32_t> scratch_;
  std::vector<double> estimate_;
};

using itemjax_native::AvailableCpus;
using itemjax_native::EnvThreads;
using itemjax_native::kMaxThreads;

int64_t ThreadCount(int64_t requested, int64_t n_sources) {
  int64_t count = requested > 0 ? requested : EnvThreads();
  if (count <= 0) count = AvailableCpus();
  const int64_t chunks = (n_sources + kSourcesPerGrab - 1) / kSourcesPerGrab;
  return std::max<int64_t>(1, std::min({count, chunks, kMaxThreads}));
}

// Runs work(pusher, k) for every k in [0, n_sources) over `threads` threads (the calling thread is
// one of them; if a thread cannot be started the others take its share). Each thread allocates its
// own Pusher; failures are caught per thread and returned as a Status.
template <typename Work>
int ForEachSource(const Graph& g, int64_t n_sources, int64_t requested_threads, const Work& work) {
  if (n_sources == 0) return kOk;
  std::atomic<int64_t> next{0};
  std::atomic<int> status{kOk};
  auto run = [&]() {
    try {
      Pusher pusher(g.n_nodes);
      for (;;) {
        if (status.load(std::memory_order_relaxed) != kOk) return;
        const int64_t start = next.fetch_add(kSourcesPerGrab);
        if (start >= n_sources) return;
        const int64_t stop = std::min(start + kSourcesPerGrab, n_sources);
        for (int64_t k = start; k < stop; ++k) work(pusher, k);
      }
    } catch (const std::bad_alloc&) {
      status.store(kNoMemory);
    } catch (...) {
      status.store(kFailed);
    }
  };
  const int64_t count = ThreadCount(requested_threads, n_sources);
  std::vector<std::thread> pool;
  try {
    pool.reserve(static_cast<size_t>(count - 1));
    for (int64_t t = 1; t < count; ++t) pool.emplace_back(run);
  } catch (const std::exception&) {
    // e.g. a thread limit: the threads started so far and this one share the work
  }
  run();
  for (std::thread& thread : pool) thread.join();
  return status.load();
}

}  // namespace

// Version of this C interface (itemjax/native/ppr_push.py checks it before any call).
ITEMJAX_EXPORT int ItemjaxPprPushAbiVersion() { return 2; }

// Hard-negative windows of `n_rows` users (ids users[0 .. n_rows-1], each in [0, n_users)) on the
// bipartite graph (n_nodes = n_users + n_items, users first). Per user u: forward push from u; the
// candidates are the items the push touched (p > 0 or r > 0; q > 0) that are not neighbours of u (its training
// row); ranked by decreasing estimate q (below), ties by increasing item id; ranks lo .. hi-1 are written to
// out[k * (hi - lo) .. (k + 1) * (hi - lo) - 1] (item ids), PAD (-1) past the last candidate.
// Selection: nth_element then sort of the best min(hi, #candidates), O(touched + hi log hi) per user.
//
// The estimate. p alone underestimates pi_u(w) by up to eps * deg(w), so a ranking by p pushes popular items
// down (on Gowalla at eps 2e-6, a third of the mass is still in r when the push stops). The missing part is
// sum_v r(v) pi_v(w) (module comment), which q approximates in two terms: the walk that stops where it is
// (alpha r(w), exact), and the rest of the residual spread by the walk's stationary distribution on the item
// side, deg(w) / m with m = nnz(R) = the sum of the item degrees. The graph being bipartite, a walk from a
// user node ends on an item with probability sum_{t odd} alpha (1 - alpha)^t = (1 - alpha) / (2 - alpha) =: f,
// and the (1 - alpha) of an item's residual that moves on starts from a user; so
//
//     q(w) = p(w) + alpha r(w) + f (R_users + (1 - alpha) R_items) deg(w) / m,
//
// R_users, R_items: the residual mass left on each side. q -> pi_u as eps -> 0 (r -> 0). Measured against
// the exact windows (docs/design.md): Gowalla overlap 0.71 -> 0.91 at eps 2e-6, ml-100k 0.97 -> 0.995.
ITEMJAX_EXPORT int ItemjaxPprPushTable(const int64_t* indptr, const int32_t* indices, int64_t n_users, int64_t n_items,
                                       double alpha, double eps, int64_t lo, int64_t hi, const int32_t* users,
                                       int64_t n_rows, int32_t* out, int64_t threads) {
  const Graph g{indptr, indices, n_users + n_items};
  if (n_users < 0 || n_items < 0 || !(alpha > 0.0 && alpha <= 1.0) || !(eps > 0.0) || lo < 0 || hi <= lo ||
      n_rows < 0 || (n_rows > 0 && (users == nullptr || out == nullptr)) || !ValidGraph(g)) {
    return kInvalid;
  }
  for (int64_t k = 0; k < n_rows; ++k) {
    if (users[k] < 0 || users[k] >= n_users) return kInvalid;
  }
  const int64_t width = hi - lo;
  // a candidate is tested against u's training row, its neighbour list: by binary search when the
  // lists are sorted (scipy's canonical CSR, what itemjax passes; checked once here), else by a scan
  bool sorted_rows = true;
  for (int64_t u = 0; u < n_users && sorted_rows; ++u) {
    sorted_rows = std::is_sorted(indices + indptr[u], indices + indptr[u + 1]);
  }
  // the estimate's tail (comment above): f and m; m > 0 whenever some user has an edge
  const double keep = 1.0 - alpha;
  const double walk_to_items = keep / (2.0 - alpha);
  const double item_edges = static_cast<double>(std::max<int64_t>(1, indptr[n_users + n_items] - indptr[n_users]));
  auto work = [&](Pusher& pusher, int64_t k) {
    const int64_t u = users[k];
    pusher.Run(g, u, alpha, eps);
    const double* p = pusher.P();
    const double* r = pusher.R();
    const int32_t* row_begin = indices + indptr[u];
    const int32_t* row_end = indices + indptr[u + 1];
    auto trained = [&](int32_t node) {
      return sorted_rows ? std::binary_search(row_begin, row_end, node) : std::find(row_begin, row_end, node) != row_end;
    };
    double residual_users = 0.0, residual_items = 0.0;
    for (const int32_t v : pusher.Touched()) (v < n_users ? residual_users : residual_items) += r[v];
    const double tail = walk_to_items * (residual_users + keep * residual_items) / item_edges;
    std::vector<double>& q = pusher.Estimate();
    std::vector<int32_t>& candidates = pusher.Scratch();
    candidates.clear();
    for (const int32_t v : pusher.Touched()) {
      if (v < n_users || trained(v)) continue;
      q[v] = p[v] + alpha * r[v] + tail * static_cast<double>(g.Degree(v));
      if (q[v] > 0.0) candidates.push_back(v);  // 0 only where alpha = 1 left a touched item unpushed
    }
    auto better = [&q](int32_t a, int32_t b) { return q[a] > q[b] || (q[a] == q[b] && a < b); };
    const int64_t n_candidates = static_cast<int64_t>(candidates.size());
    const int64_t top = std::min(hi, n_candidates);
    if (top < n_candidates) std::nth_element(candidates.begin(), candidates.begin() + top, candidates.end(), better);
    if (lo < top) std::sort(candidates.begin(), candidates.begin() + top, better);
    int32_t* row = out + k * width;
    for (int64_t rank = lo; rank < hi; ++rank) {
      row[rank - lo] = rank < top ? static_cast<int32_t>(candidates[rank] - n_users) : kPad;
    }
  };
  return ForEachSource(g, n_rows, threads, work);
}

// Forward-push estimates p of `n_sources` source nodes (each in [0, n_nodes)): row k of out
// (float64 [n_sources, n_nodes], row-major) is p of sources[k] over every node (0 where untouched).
ITEMJAX_EXPORT int ItemjaxPprPushScores(const int64_t* indptr, const int32_t* indices, int64_t n_nodes, double alpha,
                                        double eps, const int32_t* sources, int64_t n_sources, double* out,
                                        int64_t threads) {
  const Graph g{indptr, indices, n_nodes};
  if (!(alpha > 0.0 && alpha <= 1.0) || !(eps > 0.0) || n_sources < 0 ||
      (n_sources > 0 && (sources == nullptr || out == nullptr)) || !ValidGraph(g)) {
    return kInvalid;
  }
  for (int64_t k = 0; k < n_sources; ++k) {
    if (sources[k] < 0 || sources[k] >= n_nodes) return kInvalid;
  }
  auto work = [&](Pusher& pusher, int64_t k) {
    pusher.Run(g, sources[k], alpha, eps);
    double* row = out + k * n_nodes;
    std::fill(row, row + n_nodes, 0.0);
    const double* p = pusher.P();
    for (const int32_t v : pusher.Touched()) row[v] = p[v];
  };
  return ForEachSource(g, n_sources, threads, work);
}
