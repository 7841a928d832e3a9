// SPDX-License-Identifier: MIT
/*
 * A minimal classification service: one shared model, a thread per
 * connection (docs/serving.md).
 *
 *   serve [--model mlp|cnn] [--checkpoint FILE] [--seed S]
 *         [--port P | --stdin] [--max-requests N] [--max-inflight N]
 *
 * The model is fashion_mnist's (784-512-512-10 MLP or the CNN) in eval
 * mode, its weights loaded from a safetensors checkpoint (ag_module_load;
 * what examples/fashion_mnist --checkpoint writes) or, without one,
 * random from --seed.  A request is one line of 784 numbers (a 28x28
 * image, already normalised); the answer is a line "CLASS PROBABILITY"
 * (the softmax's largest entry, %.9g), or "error MESSAGE".  The line
 * "quit" ends the service.
 *
 * With --port (0: any free port) it listens on 127.0.0.1, prints
 * "listening on PORT" and serves every connection on a thread of its own
 * until a client sends "quit", SIGINT/SIGTERM arrives, or --max-requests
 * answers have been sent; then it closes every connection, joins the
 * threads and frees everything.  With --stdin it answers stdin's lines on
 * stdout.
 *
 * --max-inflight N (default: the number of online CPUs; 0: no limit)
 * admits at most N requests into the model at once; the others wait in
 * arrival order.  With many more connections than cores, every admitted
 * request then finishes within its time slice, and the tail latency is
 * the queue's instead of whole rounds of the scheduler over every thread
 * (docs/serving.md, "Tail latency").
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <ag/ag.h>

#include "fmnist.h"

#define PIXELS 784
#define LINE_MAX_BYTES (PIXELS * 32)
#define MAX_CONN 256

struct args {
	const char *model, *checkpoint;
	uint64_t seed;
	int port; /* -1: stdin */
	long max_requests; /* 0: no limit */
	long max_inflight; /* 0: no limit */
};

static struct ag_module *model;
static atomic_long answered;
static atomic_bool stopping;
static int listen_fd = -1;

static int usage(const char *why)
{
	if (why)
		fprintf(stderr, "serve: %s\n", why);
	fprintf(stderr,
		"usage: serve [--model mlp|cnn] [--checkpoint FILE] [--seed S]\n"
		"             [--port P | --stdin] [--max-requests N]\n"
		"             [--max-inflight N]\n");
	return 2;
}

static int parse(int argc, char **argv, struct args *a)
{
	*a = (struct args){ .model = "mlp",
			    .seed = 1,
			    .port = -1,
			    .max_inflight = sysconf(_SC_NPROCESSORS_ONLN) };
	for (int i = 1; i < argc; i++) {
		const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(o, "--stdin")) {
			a->port = -1;
			continue;
		}
		if (!v)
			return usage("an option lacks its value");
		i++;
		if (!strcmp(o, "--model"))
			a->model = v;
		else if (!strcmp(o, "--checkpoint"))
			a->checkpoint = v;
		else if (!strcmp(o, "--seed"))
			a->seed = strtoull(v, NULL, 10);
		else if (!strcmp(o, "--port"))
			a->port = atoi(v);
		else if (!strcmp(o, "--max-requests"))
			a->max_requests = atol(v);
		else if (!strcmp(o, "--max-inflight"))
			a->max_inflight = atol(v);
		else
			return usage("unknown option");
	}
	if (strcmp(a->model, "mlp") && strcmp(a->model, "cnn"))
		return usage("--model is mlp or cnn");
	if (a->port > 65535 || a->max_requests < 0 || a->max_inflight < 0 ||
	    a->max_inflight > 65536)
		return usage("bad --port, --max-requests or --max-inflight");
	return 0;
}

/*
 * Answers one request line into out (size n): the class and probability,
 * or an error.  Runs on any number of threads at once: the model is only
 * read (eval mode, inference mode), everything else is this call's.
 */
static void answer(const char *line, char *out, size_t n)
{
	static const int64_t shape[4] = { 1, 1, 28, 28 };
	float px[PIXELS], prob[10];
	struct ag_scope *s;
	struct ag_mode md;
	struct ag_tensor *y;
	const char *p = line;
	int best = 0;

	for (int i = 0; i < PIXELS; i++) {
		char *end;

		px[i] = strtof(p, &end);
		if (end == p) {
			snprintf(out, n, "error expected %d numbers, got %d\n",
				 PIXELS, i);
			return;
		}
		p = end;
	}
	s = ag_scope_begin();
	md = ag_inference_mode_enter();
	y = ag_from_data(AG_F32, 4, shape, px);
	y = ag_softmax(ag_module_forward(model, y), 1);
	if (!y || ag_tensor_copy_to(y, prob, sizeof(prob))) {
		snprintf(out, n, "error %s\n", ag_errmsg());
	} else {
		for (int c = 1; c < 10; c++)
			if (prob[c] > prob[best])
				best = c;
		snprintf(out, n, "%d %.9g\n", best, prob[best]);
	}
	ag_mode_exit(md);
	ag_scope_end(s);
}

/*
 * The admission gate (--max-inflight; NULL: no limit): a request takes a
 * place before the model and gives it back before its answer is sent, so
 * no place is held across the socket (include/ag/pool.h, ag_gate).
 */
static struct ag_gate *gate;

static void answer_gated(const char *line, char *out, size_t n)
{
	if (gate && ag_gate_enter(gate)) {
		snprintf(out, n, "error %s\n", ag_errmsg());
		return;
	}
	answer(line, out, n);
	if (gate)
		ag_gate_leave(gate);
}

/* Counts an answer; the one that reaches --max-requests stops the service. */
static void count_answer(const struct args *a)
{
	long k = atomic_fetch_add(&answered, 1) + 1;

	if (a->max_requests && k == a->max_requests)
		atomic_store(&stopping, true);
}

/* ------------------------------------------------------------- stdin */

static int serve_stdin(const struct args *a)
{
	char *line = malloc(LINE_MAX_BYTES);
	char out[256];

	if (!line)
		return 1;
	while (!atomic_load(&stopping) && fgets(line, LINE_MAX_BYTES, stdin)) {
		if (!strncmp(line, "quit", 4))
			break;
		answer(line, out, sizeof(out));
		fputs(out, stdout);
		fflush(stdout);
		count_answer(a);
	}
	free(line);
	return 0;
}

/* --------------------------------------------------------------- tcp */

struct conn {
	int fd;
	pthread_t thread;
	const struct args *a;
	atomic_bool done;
};

static struct conn *conns[MAX_CONN];
static int nconn;

static int send_all(int fd, const char *s, size_t n)
{
	while (n) {
		ssize_t w = send(fd, s, n, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		s += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Answers the connection's lines until it closes or the service stops. */
static void *conn_main(void *arg)
{
	struct conn *c = arg;
	char *buf = malloc(LINE_MAX_BYTES), out[256];
	size_t have = 0;

	while (buf && !atomic_load(&stopping)) {
		char *nl;
		ssize_t r;

		while ((nl = memchr(buf, '\n', have))) {
			size_t len = (size_t)(nl - buf) + 1;

			*nl = 0;
			if (!strncmp(buf, "quit", 4)) {
				atomic_store(&stopping, true);
				shutdown(listen_fd, SHUT_RDWR);
				goto out;
			}
			answer_gated(buf, out, sizeof(out));
			if (send_all(c->fd, out, strlen(out)))
				goto out;
			count_answer(c->a);
			memmove(buf, buf + len, have - len);
			have -= len;
		}
		if (have == LINE_MAX_BYTES - 1) {
			send_all(c->fd, "error line too long\n", 20);
			goto out;
		}
		r = recv(c->fd, buf + have, LINE_MAX_BYTES - 1 - have, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		have += (size_t)r;
	}
out:
	free(buf);
	if (atomic_load(&stopping) && listen_fd >= 0)
		shutdown(listen_fd, SHUT_RDWR); /* wakes accept() */
	atomic_store(&c->done, true);
	return NULL;
}

/* Joins the connections that have ended, keeping the others. */
static void reap(bool all)
{
	int j = 0;

	for (int i = 0; i < nconn; i++) {
		struct conn *c = conns[i];

		if (all)
			shutdown(c->fd, SHUT_RDWR);
		if (!all && !atomic_load(&c->done)) {
			conns[j++] = c;
			continue;
		}
		pthread_join(c->thread, NULL);
		close(c->fd);
		free(c);
	}
	nconn = j;
}

static void on_signal(int sig)
{
	(void)sig;
	atomic_store(&stopping, true);
	if (listen_fd >= 0)
		shutdown(listen_fd, SHUT_RDWR);
}

static int serve_tcp(const struct args *a)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	int one = 1;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons((uint16_t)a->port);
	listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	if (listen_fd < 0 ||
	    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one,
		       sizeof(one)) ||
	    bind(listen_fd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    listen(listen_fd, 64) ||
	    getsockname(listen_fd, (struct sockaddr *)&sa, &len)) {
		perror("serve: socket");
		return 1;
	}
	printf("listening on %d\n", ntohs(sa.sin_port));
	fflush(stdout);
	while (!atomic_load(&stopping)) {
		int fd = accept(listen_fd, NULL, NULL);
		struct conn *c;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			break; /* shut down */
		}
		reap(false);
		c = calloc(1, sizeof(*c));
		if (!c || nconn == MAX_CONN) {
			free(c);
			send_all(fd, "error busy\n", 11);
			close(fd);
			continue;
		}
		c->fd = fd;
		c->a = a;
		if (pthread_create(&c->thread, NULL, conn_main, c)) {
			close(fd);
			free(c);
			continue;
		}
		conns[nconn++] = c;
	}
	atomic_store(&stopping, true);
	reap(true);
	close(listen_fd);
	return 0;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };
	struct ag_generator *g;
	struct args a;
	int rc;

	if ((rc = parse(argc, argv, &a)))
		return rc;
	g = ag_generator_new(a.seed);
	model = g ? fmnist_model(a.model, g) : NULL;
	ag_generator_free(g);
	if (!model) {
		fprintf(stderr, "serve: %s\n", ag_errmsg());
		return 1;
	}
	if (a.checkpoint && access(a.checkpoint, R_OK) == 0 &&
	    ag_module_load(model, a.checkpoint)) {
		fprintf(stderr, "serve: %s: %s\n", a.checkpoint, ag_errmsg());
		ag_module_put(model);
		return 1;
	}
	ag_module_eval(model);
	/* the weights read by every request, packed once (a batch of one
	 * image multiplies by GEMV and does not use them; batches would) */
	if (ag_module_prepack(model) < 0) {
		fprintf(stderr, "serve: %s\n", ag_errmsg());
		ag_module_put(model);
		return 1;
	}
	if (a.max_inflight && !(gate = ag_gate_new((int)a.max_inflight, 0))) {
		fprintf(stderr, "serve: %s\n", ag_errmsg());
		ag_module_put(model);
		return 1;
	}
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	rc = a.port < 0 ? serve_stdin(&a) : serve_tcp(&a);
	fprintf(stderr, "serve: %ld answers\n", atomic_load(&answered));
	ag_gate_free(gate);
	ag_module_put(model);
	ag_trim();
	return rc;
}
