// SPDX-License-Identifier: MIT
/*
 * The docs/benchmarks.md workloads through libtorch's C++ API: the same graphs,
 * sizes, timing boundaries and JSON as ag-bench and torch_bench.py, without
 * Python's per-op overhead.  Built and run by compare.py (--cpp):
 *
 *   g++ -O2 -std=c++17 -I/usr/include/torch/csrc/api/include
 *       torch_bench.cpp -ltorch -ltorch_cpu -lc10 -o torch_bench
 *   torch_bench --threads T --reps R --warmup W [--quick] --json FILE
 *               [--workload NAME]...
 *               [--serve-threads LIST] [--serve-requests N]
 *               [--serve-model mlp|cnn] [--serve-intra]
 *               [--serve-seconds S] [--serve-gate N]
 *               [--serve-quantum US]
 *
 * serve runs only when named, as in ag-bench.
 */
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <unistd.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace
{

double now()
{
	using namespace std::chrono;
	return duration<double>(steady_clock::now().time_since_epoch())
		.count();
}

struct Series {
	std::string workload, cas, metric, unit;
	int threads;
	std::vector<double> v;
};

struct Results {
	std::vector<Series> s;
	bool recording = false;

	void record(const std::string &w, const std::string &c, int t,
		    const std::string &m, const std::string &u, double v)
	{
		for (auto &x : s)
			if (x.workload == w && x.cas == c && x.threads == t &&
			    x.metric == m) {
				if (recording)
					x.v.push_back(v);
				return;
			}
		s.push_back({ w, c, m, u, t, {} });
		if (recording)
			s.back().v.push_back(v);
	}
};

struct Config {
	int64_t chain_n, chain_s[2], ew_n, wide_k, wide_l, wide_n;
	int64_t dims[4], b;
	int steps;
	int64_t gemm_n;
	int64_t cnn_b, cnn_hw;
	int cnn_steps;
};

/* Under no-grad: g = p.grad; g *= lr; p -= g; the grad dropped. */
void sgd(std::vector<torch::Tensor> &p, double lr)
{
	torch::NoGradGuard ng;
	for (auto &q : p) {
		auto g = q.grad();
		g.mul_(lr);
		q.sub_(g);
		q.mutable_grad() = torch::Tensor();
	}
}

torch::Tensor uniform(torch::IntArrayRef shape, double lo, double hi,
		      bool grad = false)
{
	auto t = torch::rand(shape) * (hi - lo) + lo;
	return t.set_requires_grad(grad);
}

void chain(Results &r, const Config &c, int t)
{
	double nodes = 3.0 * (double)c.chain_n + 1;

	for (int i = 0; i < 2; i++) {
		auto x = uniform({ c.chain_s[i] }, -1, 1, true);
		double t0 = now(), t1, t2;
		{
			auto y = x;
			for (int64_t k = 0; k < c.chain_n; k++)
				y = y + 0.001 * torch::tanh(y);
			auto loss = y.sum();
			t1 = now();
			loss.backward();
			t2 = now();
		}
		std::string cs = "S=" + std::to_string(c.chain_s[i]);
		r.record("chain", cs, t, "fwd_ns_per_node", "ns",
			 (t1 - t0) * 1e9 / nodes);
		r.record("chain", cs, t, "bwd_ns_per_node", "ns",
			 (t2 - t1) * 1e9 / nodes);
	}
}

struct EwOp {
	const char *name;
	double lo, hi;
	int fb, bb;
};

const EwOp ew_ops[] = {
	{ "exp", -1, 1, 8, 12 },     { "log", 0.5, 2, 8, 12 },
	{ "sin", -1, 1, 8, 12 },     { "tanh", -1, 1, 8, 12 },
	{ "sigmoid", -1, 1, 8, 12 }, { "mul", -1, 1, 12, 24 },
};

torch::Tensor ew_apply(int i, const torch::Tensor &x, const torch::Tensor &w)
{
	switch (i) {
	case 0:
		return torch::exp(x);
	case 1:
		return torch::log(x);
	case 2:
		return torch::sin(x);
	case 3:
		return torch::tanh(x);
	case 4:
		return torch::sigmoid(x);
	default:
		return x * w;
	}
}

void elementwise(Results &r, const Config &c, std::vector<torch::Tensor> &xs,
		 torch::Tensor &w, int t)
{
	double n = (double)c.ew_n;

	for (int i = 0; i < 6; i++) {
		double t0, t1, t2, t3;
		{
			t0 = now();
			auto y = ew_apply(i, xs[i], w);
			t1 = now();
			auto loss = y.sum();
			t2 = now();
			loss.backward();
			t3 = now();
		}
		xs[i].mutable_grad() = torch::Tensor();
		w.mutable_grad() = torch::Tensor();
		double f = t1 - t0, b = t3 - t2;
		const EwOp &op = ew_ops[i];
		r.record("elementwise", op.name, t, "fwd_ms", "ms", f * 1e3);
		r.record("elementwise", op.name, t, "bwd_ms", "ms", b * 1e3);
		r.record("elementwise", op.name, t, "fwd_gbps", "GB/s",
			 op.fb * n / f * 1e-9);
		r.record("elementwise", op.name, t, "bwd_gbps", "GB/s",
			 op.bb * n / b * 1e-9);
	}
}

void wide(Results &r, const Config &c, torch::Tensor &x,
	  std::vector<torch::Tensor> &ws, int t)
{
	double t0 = now(), t1, t2;
	{
		torch::Tensor loss;
		for (int64_t k = 0; k < c.wide_k; k++) {
			auto h = x * ws[k];
			for (int64_t j = 0; j < c.wide_l; j++)
				h = torch::tanh(h);
			h = h.sum();
			loss = loss.defined() ? loss + h : h;
		}
		t1 = now();
		loss.backward();
		t2 = now();
	}
	x.mutable_grad() = torch::Tensor();
	for (auto &w : ws)
		w.mutable_grad() = torch::Tensor();
	std::string cs = "K=" + std::to_string(c.wide_k) +
			 ",L=" + std::to_string(c.wide_l) +
			 ",n=" + std::to_string(c.wide_n);
	r.record("wide", cs, t, "fwd_ms", "ms", (t1 - t0) * 1e3);
	r.record("wide", cs, t, "bwd_ms", "ms", (t2 - t1) * 1e3);
}

void mlp(Results &r, const Config &c, std::vector<torch::Tensor> &p,
	 const torch::Tensor &x, const torch::Tensor &tgt, int t)
{
	double t0 = now();

	for (int s = 0; s < c.steps; s++) {
		auto h = x;
		for (int l = 0; l < 3; l++) {
			h = torch::linear(h, p[2 * l], p[2 * l + 1]);
			if (l < 2)
				h = torch::relu(h);
		}
		torch::cross_entropy_loss(h, tgt).backward();
		sgd(p, 0.01);
	}
	double st = (now() - t0) / c.steps;
	std::string cs = std::to_string(c.dims[0]) + "-" +
			 std::to_string(c.dims[1]) + "-" +
			 std::to_string(c.dims[2]) + "-" +
			 std::to_string(c.dims[3]) + ",B=" + std::to_string(c.b);
	r.record("mlp", cs, t, "steps_per_s", "steps/s", 1 / st);
	r.record("mlp", cs, t, "step_ms", "ms", st * 1e3);
}

/* p: conv1 w b, conv2 w b, bn weight bias, fc1 w b, fc2 w b */
void cnn(Results &r, const Config &c, std::vector<torch::Tensor> &p,
	 torch::Tensor &rmean, torch::Tensor &rvar, const torch::Tensor &x,
	 const torch::Tensor &tgt, int t)
{
	double t0 = now();

	for (int s = 0; s < c.cnn_steps; s++) {
		auto h = torch::conv2d(x, p[0], p[1], 1, 1);
		h = torch::max_pool2d(torch::relu(h), 2);
		h = torch::conv2d(h, p[2], p[3], 1, 1);
		h = torch::batch_norm(h, p[4], p[5], rmean, rvar, true, 0.1,
				      1e-5, false);
		h = torch::max_pool2d(torch::relu(h), 2).reshape({ c.cnn_b, -1 });
		h = torch::relu(torch::linear(h, p[6], p[7]));
		h = torch::linear(h, p[8], p[9]);
		torch::cross_entropy_loss(h, tgt).backward();
		sgd(p, 0.01);
	}
	double st = (now() - t0) / c.cnn_steps;
	std::string cs = "fmnist-cnn,B=" + std::to_string(c.cnn_b);
	if (c.cnn_hw != 28)
		cs += "," + std::to_string(c.cnn_hw) + "x" +
		      std::to_string(c.cnn_hw);
	r.record("cnn", cs, t, "steps_per_s", "steps/s", 1 / st);
	r.record("cnn", cs, t, "step_ms", "ms", st * 1e3);
}

void gemm(Results &r, const Config &c, const torch::Tensor &a,
	  const torch::Tensor &b, int t)
{
	torch::NoGradGuard ng;
	double t0 = now();
	auto y = torch::mm(a, b);
	double s = now() - t0;
	double n = (double)c.gemm_n;
	r.record("limits", std::to_string(c.gemm_n) + "^3", t, "gemm_gflops",
		 "GFLOP/s", 2 * n * n * n / s * 1e-9);
}

/* ------------------------------------------------------------- serve */

/*
 * ag-bench's serve workload (tools/bench/wl_serve.c): T request threads
 * share one model and each runs R requests, every request copying its
 * input into a fresh tensor.  infer: at::InferenceMode, logits -> softmax,
 * probabilities copied out (batch 1 and 32); grad: grad mode on, the
 * cross-entropy's gradient with respect to the input only (torch::autograd
 * ::grad; no parameter's .grad is touched), batch 1.  Each request thread
 * calls at::set_num_threads(1), as libtorch services are deployed; with
 * --serve-intra the threads keep the default intra-op pool instead, and
 * the case names end in ",intra".
 */
struct ServeModel {
	bool cnn;
	std::string name;
	std::vector<torch::Tensor> p;
	torch::Tensor rmean, rvar;
	int64_t in, hw;
};

torch::Tensor serve_forward(const ServeModel &m, const torch::Tensor &x)
{
	if (!m.cnn) {
		auto h = x;
		for (int l = 0; l < 3; l++) {
			h = torch::linear(h, m.p[2 * l], m.p[2 * l + 1]);
			if (l < 2)
				h = torch::relu(h);
		}
		return h;
	}
	auto h = torch::conv2d(x, m.p[0], m.p[1], 1, 1);
	h = torch::max_pool2d(torch::relu(h), 2);
	h = torch::conv2d(h, m.p[2], m.p[3], 1, 1);
	h = torch::batch_norm(h, m.p[4], m.p[5], m.rmean, m.rvar, false, 0.1,
			      1e-5, false);
	h = torch::max_pool2d(torch::relu(h), 2).reshape({ x.size(0), -1 });
	h = torch::relu(torch::linear(h, m.p[6], m.p[7]));
	return torch::linear(h, m.p[8], m.p[9]);
}

struct ServeKind {
	bool grad;
	int64_t b;
};

const ServeKind serve_kinds[] = { { false, 1 }, { false, 32 }, { true, 1 } };

/* One request: probabilities [b, 10] or the input gradient into out. */
void serve_request(const ServeModel &m, const ServeKind &k, const float *in,
		   const torch::Tensor &tgt, float *out)
{
	std::vector<int64_t> shape = m.cnn ?
		std::vector<int64_t>{ k.b, 1, m.hw, m.hw } :
		std::vector<int64_t>{ k.b, m.in };
	if (!k.grad) {
		c10::InferenceMode guard;
		auto x = torch::from_blob(const_cast<float *>(in), shape)
				 .clone();
		auto y = torch::softmax(serve_forward(m, x), 1).contiguous();
		std::memcpy(out, y.data_ptr<float>(), sizeof(float) * k.b * 10);
		return;
	}
	torch::AutoGradMode on(true);
	auto x = torch::from_blob(const_cast<float *>(in), shape)
			 .clone()
			 .set_requires_grad(true);
	auto loss = torch::cross_entropy_loss(serve_forward(m, x), tgt);
	auto g = torch::autograd::grad({ loss }, { x })[0].contiguous();
	std::memcpy(out, g.data_ptr<float>(), sizeof(float) * k.b * m.in);
}

/* Log-linear histogram of ns, as wl_serve.c's: 32 buckets per octave. */
struct Hist {
	std::vector<uint64_t> n = std::vector<uint64_t>(64 + 35 * 32);
	uint64_t count = 0;

	void add(double s)
	{
		uint64_t ns = (uint64_t)(s * 1e9);
		int i;
		if (ns < 64) {
			i = (int)ns;
		} else {
			int msb = 63 - __builtin_clzll(ns);
			i = 64 + (msb - 6) * 32 + (int)((ns >> (msb - 5)) & 31);
		}
		n[std::min<size_t>(i, n.size() - 1)]++;
		count++;
	}
	double quantile(double q) const
	{
		uint64_t want = std::max<uint64_t>(1, (uint64_t)std::ceil(q * count));
		uint64_t seen = 0;
		for (size_t i = 0; i < n.size(); i++) {
			seen += n[i];
			if (seen >= want) {
				if (i < 64)
					return i * 1e-3;
				int msb = (int)(i - 64) / 32 + 6;
				return std::ldexp(1.0 + ((i - 64) % 32 + 1) / 32.0,
						  msb) * 1e-3;
			}
		}
		return NAN;
	}
};

double rss_mib()
{
	long pages = 0, res = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (!f)
		return NAN;
	if (fscanf(f, "%ld %ld", &pages, &res) != 2)
		res = 0;
	fclose(f);
	return (double)res * (double)sysconf(_SC_PAGESIZE) / (1 << 20);
}

/*
 * --serve-gate N: the same admission gate as libag's ag_gate
 * (engine/pool/gate.c), written again here because this program must not
 * link libag: N places, waiters in arrival order, each sleeping on its own
 * thread's pipe, a place handed to the oldest waiter after the lock is
 * dropped, and a holder that yields at a request boundary once it has held
 * its place for the quantum and someone waits.  So that libtorch can be
 * measured behind the gate libag's figures were measured behind.
 */
struct Gate {
	struct Waiter {
		int fd[2];
		Waiter *next = nullptr;
	};
	std::mutex lock;
	int free;
	double quantum;
	Waiter *head = nullptr, **tail = &head;
	std::atomic<int> waiting{ 0 };

	Gate(int slots, double quantum_s) : free(slots), quantum(quantum_s) {}

	/* under l, which it drops: queue, wake w0 (may be null), sleep */
	void wait_turn(Waiter &w, std::unique_lock<std::mutex> &l, Waiter *w0)
	{
		char c;

		w.next = nullptr;
		*tail = &w;
		tail = &w.next;
		waiting++;
		l.unlock();
		wake(w0);
		while (read(w.fd[0], &c, 1) != 1)
			;
	}
	Waiter *release() /* under lock */
	{
		Waiter *w = head;

		if (!w) {
			free++;
			return nullptr;
		}
		head = w->next;
		if (!head)
			tail = &head;
		waiting--;
		return w;
	}
	static void wake(Waiter *w)
	{
		char c = 0;

		while (w && write(w->fd[1], &c, 1) != 1)
			;
	}
	void enter(Waiter &w)
	{
		std::unique_lock<std::mutex> l(lock);

		if (free > 0 && !head) {
			free--;
			return;
		}
		wait_turn(w, l, nullptr);
	}
	void leave()
	{
		std::unique_lock<std::mutex> l(lock);
		Waiter *w = release();

		l.unlock();
		wake(w);
	}
	/* since: when this thread took its place; updated */
	void yield(Waiter &self, double &since, double t)
	{
		if (!waiting.load(std::memory_order_relaxed) ||
		    t - since < quantum)
			return;
		std::unique_lock<std::mutex> l(lock);
		if (!head) {
			since = t;
			return;
		}
		wait_turn(self, l, release());
		since = now();
	}
};

long serve_budget(const ServeModel &m, const ServeKind &k, int t, int fixed)
{
	if (fixed)
		return fixed;
	long b = !m.cnn ? (k.b == 1 ? (k.grad ? 8000 : 20000) : 2000) :
			  (k.b == 1 ? (k.grad ? 800 : 2000) : 100);
	b /= t;
	return b < 50 ? 50 : b;
}

/*
 * As wl_serve.c: the budget above, and no request starts after seconds
 * (0: no limit) from the case's start, but each thread runs at least one.
 */
void serve(Results &r, const ServeModel &m, const std::vector<int> &ts,
	   int fixed, double seconds, bool intra, int gate_n, double quantum,
	   const std::vector<float> &input,
	   const std::vector<torch::Tensor> &tgts)
{
	for (size_t ki = 0; ki < 3; ki++) {
		const ServeKind &k = serve_kinds[ki];
		for (int t : ts) {
			long reqs = serve_budget(m, k, t, fixed);
			std::vector<Hist> h(t);
			std::vector<double> t_end(t);
			std::vector<std::thread> th;
			std::atomic<int> ready{ 0 };
			std::atomic<bool> go{ false };
			double deadline = HUGE_VAL;
			Gate gate(gate_n, quantum);
			for (int i = 0; i < t; i++)
				th.emplace_back([&, i]() {
					if (!intra)
						at::set_num_threads(1);
					std::vector<float> out(32 * m.in);
					Gate::Waiter w;
					double since = 0;
					if (gate_n && pipe(w.fd))
						abort();
					ready++;
					while (!go.load())
						std::this_thread::yield();
					for (long j = 0; j < reqs &&
					     (!j || now() <= deadline); j++) {
						double t0 = now();
						if (gate_n && !j) {
							gate.enter(w);
							since = now();
						} else if (gate_n) {
							gate.yield(w, since, t0);
						}
						serve_request(m, k, input.data(),
							      tgts[ki], out.data());
						h[i].add(now() - t0);
					}
					if (gate_n) {
						gate.leave();
						close(w.fd[0]);
						close(w.fd[1]);
					}
					t_end[i] = now();
				});
			while (ready.load() < t)
				std::this_thread::yield();
			double t0 = now();
			if (seconds > 0)
				deadline = t0 + seconds;
			go = true; /* publishes the deadline */
			for (auto &x : th)
				x.join();
			Hist all;
			for (auto &x : h) {
				for (size_t b = 0; b < all.n.size(); b++)
					all.n[b] += x.n[b];
				all.count += x.count;
			}
			double wall = *std::max_element(t_end.begin(), t_end.end()) - t0;
			std::string cs = m.name + ",B=" + std::to_string(k.b) +
					 ",T=" + std::to_string(t) + "," +
					 (k.grad ? "grad" : "infer") +
					 (gate_n ? ",gate" : "") +
					 (intra ? ",intra" : "");
			r.record("serve", cs, t, "requests_per_s", "req/s",
				 all.count / wall);
			r.record("serve", cs, t, "requests", "req",
				 (double)all.count);
			r.record("serve", cs, t, "p50_us", "us", all.quantile(0.5));
			r.record("serve", cs, t, "p99_us", "us", all.quantile(0.99));
			r.record("serve", cs, t, "p999_us", "us", all.quantile(0.999));
			r.record("serve", cs, t, "rss_mib", "MiB", rss_mib());
		}
	}
}

ServeModel serve_model(bool cnn, bool quick)
{
	ServeModel m;
	m.cnn = cnn;
	m.name = cnn ? "cnn" : "mlp";
	if (!cnn) {
		std::vector<int64_t> d = quick ? std::vector<int64_t>{ 32, 64, 64, 10 } :
						 std::vector<int64_t>{ 784, 512, 512, 10 };
		for (int l = 0; l < 3; l++) {
			double rr = 1 / std::sqrt((double)d[l]);
			m.p.push_back(uniform({ d[l + 1], d[l] }, -rr, rr, true));
			m.p.push_back(uniform({ d[l + 1] }, -rr, rr, true));
		}
		m.in = d[0];
		m.hw = 0;
		return m;
	}
	m.hw = quick ? 8 : 28;
	m.in = m.hw * m.hw;
	int64_t q = m.hw / 4;
	std::vector<std::vector<int64_t> > sh = {
		{ 32, 1, 3, 3 }, { 64, 32, 3, 3 }, {}, { 128, 64 * q * q }, { 10, 128 }
	};
	for (auto &s : sh) {
		if (s.empty()) {
			m.p.push_back(uniform({ 64 }, 0.5, 1.5, true));
			m.p.push_back(uniform({ 64 }, -0.1, 0.1, true));
			continue;
		}
		int64_t fan_in = 1;
		for (size_t d = 1; d < s.size(); d++)
			fan_in *= s[d];
		double rr = 1 / std::sqrt((double)fan_in);
		m.p.push_back(uniform(s, -rr, rr, true));
		m.p.push_back(uniform({ s[0] }, -rr, rr, true));
	}
	m.rmean = uniform({ 64 }, -0.1, 0.1);
	m.rvar = uniform({ 64 }, 0.5, 1.5);
	return m;
}

std::string jstr(const std::string &s)
{
	std::string o = "\"";
	for (char ch : s) {
		if (ch == '"' || ch == '\\')
			o += '\\';
		o += ch;
	}
	return o + "\"";
}

std::string cpu_model()
{
	std::ifstream f("/proc/cpuinfo");
	std::string line;
	while (std::getline(f, line))
		if (line.rfind("model name", 0) == 0) {
			auto p = line.find(':');
			auto v = line.substr(p + 1);
			v.erase(0, v.find_first_not_of(" \t"));
			return v;
		}
	return "unknown";
}

} // namespace

int main(int argc, char **argv)
{
	int threads = 1, reps = 7, warmup = 1;
	bool quick = false;
	std::string json;
	std::set<std::string> sel;
	std::vector<int> serve_threads = { 1, 2, 8, 64 };
	std::string serve_models = "both";
	int serve_requests = 0;
	double serve_seconds = 2;
	bool serve_intra = false;
	int serve_gate = 0, serve_quantum_us = 1000;

	for (int i = 1; i < argc; i++) {
		std::string a = argv[i];
		auto next = [&]() -> std::string {
			if (i + 1 >= argc) {
				fprintf(stderr, "torch_bench: %s needs a value\n",
					a.c_str());
				exit(2);
			}
			return argv[++i];
		};
		if (a == "--threads")
			threads = std::atoi(next().c_str());
		else if (a == "--reps")
			reps = std::atoi(next().c_str());
		else if (a == "--warmup")
			warmup = std::atoi(next().c_str());
		else if (a == "--json")
			json = next();
		else if (a == "--workload")
			sel.insert(next());
		else if (a == "--quick")
			quick = true;
		else if (a == "--serve-threads") {
			std::string v = next();
			serve_threads.clear();
			for (size_t p = 0; p < v.size();) {
				size_t e = v.find(',', p);
				if (e == std::string::npos)
					e = v.size();
				serve_threads.push_back(
					std::atoi(v.substr(p, e - p).c_str()));
				p = e + 1;
			}
		} else if (a == "--serve-requests")
			serve_requests = std::atoi(next().c_str());
		else if (a == "--serve-seconds")
			serve_seconds = std::atof(next().c_str());
		else if (a == "--serve-model")
			serve_models = next();
		else if (a == "--serve-intra")
			serve_intra = true;
		else if (a == "--serve-gate")
			serve_gate = std::atoi(next().c_str());
		else if (a == "--serve-quantum")
			serve_quantum_us = std::atoi(next().c_str());
		else {
			fprintf(stderr, "torch_bench: unknown option %s\n",
				a.c_str());
			return 2;
		}
	}
	if (sel.empty())
		sel = { "chain", "elementwise", "wide", "mlp", "cnn", "limits" };
	if (json.empty()) {
		fprintf(stderr, "torch_bench: --json FILE is required\n");
		return 2;
	}
	torch::set_num_threads(threads);
	torch::manual_seed(20260101);
	Config c = quick ? Config{ 1000, { 1, 16 }, 4096, 16, 32, 256,
				   { 32, 64, 64, 10 }, 16, 2, 96, 4, 8, 1 } :
			   Config{ 10000, { 1, 1024 }, 1 << 22, 16, 32, 65536,
				   { 784, 512, 512, 10 }, 128, 5, 1024,
				   128, 28, 2 };

	std::vector<torch::Tensor> ew_x, wide_w, mp, cp;
	torch::Tensor ew_w, wide_x, mlp_x, ga, gb;
	for (auto &op : ew_ops)
		ew_x.push_back(uniform({ c.ew_n }, op.lo, op.hi, true));
	ew_w = uniform({ c.ew_n }, -1, 1, true);
	wide_x = uniform({ c.wide_n }, -1, 1, true);
	for (int64_t k = 0; k < c.wide_k; k++)
		wide_w.push_back(uniform({ c.wide_n }, -1, 1, true));
	for (int l = 0; l < 3; l++) {
		double r = 1 / std::sqrt((double)c.dims[l]);
		/* W as [out, in], as torch::linear and ag_linear take it */
		mp.push_back(uniform({ c.dims[l + 1], c.dims[l] }, -r, r, true));
		mp.push_back(uniform({ c.dims[l + 1] }, -r, r, true));
	}
	mlp_x = uniform({ c.b, c.dims[0] }, -1, 1);
	auto tgt = torch::randint(0, c.dims[3], { c.b }, torch::kLong);
	/* the cnn: weights and biases in +-1/sqrt(fan_in), BatchNorm 1, 0 */
	int64_t q = c.cnn_hw / 4;
	std::vector<std::vector<int64_t> > cshape = {
		{ 32, 1, 3, 3 }, { 64, 32, 3, 3 }, {}, { 128, 64 * q * q },
		{ 10, 128 }
	};
	for (auto &sh : cshape) {
		if (sh.empty()) {
			cp.push_back(torch::ones({ 64 }).set_requires_grad(true));
			cp.push_back(torch::zeros({ 64 }).set_requires_grad(true));
			continue;
		}
		int64_t fan_in = 1;
		for (size_t d = 1; d < sh.size(); d++)
			fan_in *= sh[d];
		double r = 1 / std::sqrt((double)fan_in);
		cp.push_back(uniform(sh, -r, r, true));
		cp.push_back(uniform({ sh[0] }, -r, r, true));
	}
	auto cnn_rmean = torch::zeros({ 64 }), cnn_rvar = torch::ones({ 64 });
	auto cnn_x = uniform({ c.cnn_b, 1, c.cnn_hw, c.cnn_hw }, 0, 1);
	auto cnn_tgt = torch::randint(0, 10, { c.cnn_b }, torch::kLong);
	ga = uniform({ c.gemm_n, c.gemm_n }, -1, 1);
	gb = uniform({ c.gemm_n, c.gemm_n }, -1, 1);

	std::vector<ServeModel> sm;
	std::vector<float> serve_in;
	std::vector<torch::Tensor> serve_tgt;
	if (sel.count("serve")) {
		if (serve_models != "cnn")
			sm.push_back(serve_model(false, quick));
		if (serve_models != "mlp")
			sm.push_back(serve_model(true, quick));
		auto u = uniform({ 32 * 784 }, 0, 1);
		serve_in.assign(u.data_ptr<float>(), u.data_ptr<float>() + u.numel());
		for (auto &k : serve_kinds)
			serve_tgt.push_back(
				torch::randint(0, 10, { k.b }, torch::kLong));
	}

	Results r;
	for (int rep = -warmup; rep < reps; rep++) {
		r.recording = rep >= 0;
		if (sel.count("chain"))
			chain(r, c, threads);
		if (sel.count("elementwise"))
			elementwise(r, c, ew_x, ew_w, threads);
		if (sel.count("wide"))
			wide(r, c, wide_x, wide_w, threads);
		if (sel.count("mlp"))
			mlp(r, c, mp, mlp_x, tgt, threads);
		if (sel.count("cnn"))
			cnn(r, c, cp, cnn_rmean, cnn_rvar, cnn_x, cnn_tgt,
			    threads);
		if (sel.count("limits") || sel.count("gemm"))
			gemm(r, c, ga, gb, threads);
		for (auto &m : sm)
			serve(r, m, serve_threads, serve_requests, serve_seconds,
			      serve_intra, serve_gate, serve_quantum_us * 1e-6,
			      serve_in, serve_tgt);
	}

	FILE *f = fopen(json.c_str(), "w");
	if (!f) {
		perror(json.c_str());
		return 1;
	}
	const char *cap = getenv("ATEN_CPU_CAPABILITY");
	fprintf(f,
		"{\n  \"machine\": {\"cpu\": %s, \"cores\": %d, \"isa\": %s, \"blas\": \"OpenBLAS via libtorch\", \"version\": \"libtorch C++\"},\n  \"results\": [",
		jstr(cpu_model()).c_str(), (int)std::thread::hardware_concurrency(),
		jstr(cap ? cap : "default").c_str());
	bool first = true;
	for (auto &s : r.s) {
		if (s.v.empty())
			continue;
		auto v = s.v;
		std::sort(v.begin(), v.end());
		size_t n = v.size();
		double med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
		fprintf(f,
			"%s\n    {\"workload\": %s, \"case\": %s, \"threads\": %d, \"metric\": %s, \"unit\": %s, \"median\": %.6g, \"min\": %.6g, \"max\": %.6g, \"reps\": %zu}",
			first ? "" : ",", jstr(s.workload).c_str(),
			jstr(s.cas).c_str(), s.threads, jstr(s.metric).c_str(),
			jstr(s.unit).c_str(), med, v[0], v[n - 1], n);
		first = false;
	}
	fprintf(f, "\n  ]\n}\n");
	fclose(f);
	return 0;
}
