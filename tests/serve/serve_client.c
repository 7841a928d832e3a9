// SPDX-License-Identifier: MIT
/*
 * Drives examples/serve: saves a random MLP's checkpoint, starts the
 * service on it (with another --seed, so that only a loaded checkpoint
 * gives the right answers) on a free port, and has 8 clients on 8
 * connections at once send REQUESTS images each.  Every answer must name
 * the class and probability this process computes with a direct forward of
 * the same model.  Then "quit": the service must exit 0 on its own (under
 * the sanitizers, with nothing leaked).  An alarm bounds the whole run.
 *
 *   serve_client SERVE_BINARY CHECKPOINT_PATH
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ag/ag.h>

#include "fmnist_models.h"

#define CLIENTS 8
#define REQUESTS 25
#define PIXELS 784

static struct ag_module *model;
static int port;
static pid_t server = -1;

struct client {
	int id, bad, answered;
	char why[256];
};

static void on_alarm(int sig)
{
	static const char msg[] = "serve_client: timed out\n";

	(void)sig;
	if (server > 0)
		kill(server, SIGKILL);
	if (write(2, msg, sizeof(msg) - 1) < 0)
		_exit(1);
	_exit(1);
}

static struct ag_module *make_mlp(uint64_t seed)
{
	struct ag_generator *g = ag_generator_new(seed);
	struct ag_module *m;

	if (!g)
		return NULL;
	m = fmnist_mlp(g);
	ag_generator_free(g);
	if (m)
		ag_module_eval(m);
	return m;
}

/* The direct forward: class and probability of image px. */
static int expect(const float *px, int *cls, float *prob)
{
	static const int64_t shape[4] = { 1, 1, 28, 28 };
	struct ag_scope *s = ag_scope_begin();
	struct ag_mode md = ag_inference_mode_enter();
	struct ag_tensor *y;
	float p[10];
	int rc = -1;

	y = ag_softmax(ag_module_forward(model,
					 ag_from_data(AG_F32, 4, shape, px)),
		       1);
	if (y && !ag_tensor_copy_to(y, p, sizeof(p))) {
		*cls = 0;
		for (int c = 1; c < 10; c++)
			if (p[c] > p[*cls])
				*cls = c;
		*prob = p[*cls];
		rc = 0;
	}
	ag_mode_exit(md);
	ag_scope_end(s);
	return rc;
}

static int connect_local(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons((uint16_t)port);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		close(fd);
		return -1;
	}
	return fd;
}

static int send_all(int fd, const char *s, size_t n)
{
	while (n) {
		ssize_t w = send(fd, s, n, MSG_NOSIGNAL);

		if (w <= 0)
			return -1;
		s += w;
		n -= (size_t)w;
	}
	return 0;
}

/* One line from fd into buf (without the newline); -1 on EOF. */
static int read_line(int fd, char *buf, size_t n)
{
	size_t have = 0;

	while (have + 1 < n) {
		ssize_t r = recv(fd, buf + have, 1, 0);

		if (r <= 0)
			return -1;
		if (buf[have] == '\n') {
			buf[have] = 0;
			return 0;
		}
		have++;
	}
	return -1;
}

static void *client_main(void *arg)
{
	struct client *c = arg;
	char *req = malloc(PIXELS * 16), ans[128];
	unsigned seed = 1234u + (unsigned)c->id;
	float px[PIXELS];
	int fd = connect_local();

	if (fd < 0 || !req) {
		snprintf(c->why, sizeof(c->why), "cannot connect");
		c->bad++;
		goto out;
	}
	for (int r = 0; r < REQUESTS; r++) {
		size_t len = 0;
		int cls = -1, got_cls;
		float prob = NAN, got_prob;

		for (int i = 0; i < PIXELS; i++) {
			px[i] = (float)rand_r(&seed) / (float)RAND_MAX * 4 - 2;
			len += (size_t)snprintf(req + len, 16, "%.6g ", px[i]);
		}
		req[len - 1] = '\n';
		/* reparse: the server sees the printed digits */
		{
			const char *p = req;

			for (int i = 0; i < PIXELS; i++) {
				char *end;

				px[i] = strtof(p, &end);
				p = end;
			}
		}
		if (send_all(fd, req, len) || read_line(fd, ans, sizeof(ans))) {
			snprintf(c->why, sizeof(c->why),
				 "request %d: connection lost", r);
			c->bad++;
			break;
		}
		c->answered++;
		if (expect(px, &cls, &prob) ||
		    sscanf(ans, "%d %f", &got_cls, &got_prob) != 2 ||
		    got_cls != cls ||
		    !(fabsf(got_prob - prob) <= 1e-6f + 1e-5f * prob)) {
			snprintf(c->why, sizeof(c->why),
				 "request %d: got '%.100s', want %d %.9g", r,
				 ans, cls, prob);
			c->bad++;
		}
	}
out:
	if (fd >= 0)
		close(fd);
	free(req);
	return NULL;
}

/* options passed on to the service, e.g. --max-inflight 1 */
#define MAX_EXTRA 4

int main(int argc, char **argv)
{
	pthread_t th[CLIENTS];
	struct client cl[CLIENTS];
	int out[2], status, bad = 0, answered = 0, fd;
	char line[64];
	FILE *f;

	if (argc < 3 || argc > 3 + MAX_EXTRA) {
		fprintf(stderr,
			"usage: serve_client SERVE CHECKPOINT [SERVE OPTIONS]\n");
		return 2;
	}
	signal(SIGALRM, on_alarm);
	alarm(240);
	model = make_mlp(7);
	if (!model || ag_module_save(model, argv[2])) {
		fprintf(stderr, "serve_client: %s\n", ag_errmsg());
		return 1;
	}
	if (pipe(out))
		return 1;
	server = fork();
	if (server == 0) {
		dup2(out[1], 1);
		close(out[0]);
		close(out[1]);
		char *args[10 + MAX_EXTRA] = { argv[1], "--model",
					       "mlp",	"--checkpoint",
					       argv[2], "--seed",
					       "99",	"--port",
					       "0" };

		for (int i = 3; i < argc; i++)
			args[9 + i - 3] = argv[i];
		execv(argv[1], args);
		_exit(127);
	}
	close(out[1]);
	f = fdopen(out[0], "r");
	if (server < 0 || !f || !fgets(line, sizeof(line), f) ||
	    sscanf(line, "listening on %d", &port) != 1) {
		fprintf(stderr, "serve_client: the service did not start\n");
		if (server > 0)
			kill(server, SIGKILL);
		return 1;
	}
	for (int i = 0; i < CLIENTS; i++) {
		cl[i] = (struct client){ .id = i };
		pthread_create(&th[i], NULL, client_main, &cl[i]);
	}
	for (int i = 0; i < CLIENTS; i++) {
		pthread_join(th[i], NULL);
		if (cl[i].bad)
			fprintf(stderr, "client %d: %d bad, e.g. %s\n", i,
				cl[i].bad, cl[i].why);
		bad += cl[i].bad;
		answered += cl[i].answered;
	}
	fd = connect_local();
	if (fd < 0 || send_all(fd, "quit\n", 5))
		bad++;
	if (fd >= 0)
		close(fd);
	if (waitpid(server, &status, 0) != server || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != 0) {
		fprintf(stderr, "serve_client: the service did not exit 0\n");
		bad++;
	}
	fclose(f);
	ag_module_put(model);
	printf("%d answers from %d clients, %d wrong\n", answered, CLIENTS,
	       bad);
	return bad || answered != CLIENTS * REQUESTS;
}
