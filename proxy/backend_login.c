/*
 * backend_login — the login step of a backend connection (see backend.h):
 * once the connection is READY with a login wanted, the credentials go out
 * through the command channel as AUTHENTICATE PLAIN (SASL-IR, or on the
 * "+"), or LOGIN (a master login as "user<sep>master" when the backend
 * has no AUTH=PLAIN); the tagged answer decides AUTH_FAILED, UNAVAILABLE,
 * or ATTACHED once the post-login capabilities are known (from the OK, the
 * pool's cache, or a CAPABILITY asked after).
 *
 *   READY --bk_send_login--> LOGIN --OK [CAPABILITY ...]--> ATTACHED
 *                                 --OK--> LOGIN_CAPS --CAPABILITY--> ATTACHED
 *                                 --NO / BAD--> done(AUTH_FAILED | UNAVAILABLE)
 *
 * The credentials live in the backend until queued, then only in the
 * queue and conn.out, wiped once sent (BK_CMD_SECRET).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "base64.h"
#include "caps.h"
#include "imap_login.h"

static void bk_login_cb(void *arg, struct backend *b, const struct bk_reply *r)
{
	(void)arg;
	if (r->ev == BK_EV_CONTINUE) {
		/* A bearer token refused (RFC 7628 3.2.2): the server's error
		 * challenge, answered with the dummy response; its NO follows. */
		if (b->mech != NULL && b->plain_b64 == NULL && !b->mech_failed) {
			const char *dummy = strcmp(b->mech, "OAUTHBEARER") == 0 ? "AQ==" : "";
			b->mech_failed = true;
			if (backend_cmd_reply(b, dummy, strlen(dummy), 0) < 0)
				bk_fail(b, "command too long");
			return;
		}
		/* AUTHENTICATE without SASL-IR: the response, once. */
		if (b->plain_b64 == NULL) {
			bk_fail(b, "unexpected continuation request");
			return;
		}
		if (backend_cmd_reply(b, b->plain_b64, strlen(b->plain_b64), BK_CMD_SECRET) < 0) {
			bk_fail(b, "command too long");
			return;
		}
		bk_wipe_free(&b->plain_b64, strlen(b->plain_b64));
		return;
	}
	if (r->ev != BK_EV_DONE)
		return; /* GONE: bk_fail reports to the owner */
	if (b->plain_b64 != NULL)
		bk_wipe_free(&b->plain_b64, strlen(b->plain_b64));
	if (r->status != BK_ST_OK) {
		bool no = r->status == BK_ST_NO;
		bool busy = no && imap_login_no_unavailable(r->head->rest, r->head->rest_len);
		bk_finish(b, busy || !no ? BK_RES_UNAVAILABLE : BK_RES_AUTH_FAILED,
		          no ? "credentials refused" : "login command rejected");
		return;
	}
	const char *known = b->hooks != NULL && b->hooks->login_caps != NULL
	                        ? b->hooks->login_caps(b->hooks_ctx)
	                        : NULL;

	b->caps_known = false;
	bk_caps_from_code(b, r->head->rest, r->head->rest_len);
	if (b->state == BK_FAILED)
		return;
	if (b->caps_known && b->hooks != NULL && b->hooks->learn_login_caps != NULL)
		b->hooks->learn_login_caps(b->hooks_ctx, b->caps);
	if (!b->caps_known && known != NULL)
		bk_store_caps(b, (const uint8_t *)known, strlen(known));
	if (b->state == BK_FAILED)
		return;
	if (b->caps_known) {
		bk_enter(b, BK_ATTACHED);
		bk_finish(b, BK_RES_OK, "logged in");
		return;
	}
	if (b->hooks != NULL && b->hooks->caps_queried != NULL)
		b->hooks->caps_queried(b->hooks_ctx);
	bk_ask_caps(b, BK_LOGIN_CAPS);
}

/* ID's answer: what the server says of itself is of no use here, and a
 * refusal changes nothing for the login. */
static void bk_id_cb(void *arg, struct backend *b, const struct bk_reply *r)
{
	(void)arg, (void)b, (void)r;
}

int backend_set_id(struct backend *b, const char *args)
{
	char *p = strdup(args);

	if (p == NULL)
		return -1;
	free(b->id_args);
	b->id_args = p;
	return 0;
}

/* The ID before the login, where the server offers it (RFC 2971 allows it
 * in any state). */
static void bk_send_id(struct backend *b)
{
	char *args = b->id_args;
	size_t n;

	b->id_args = NULL;
	if (args == NULL)
		return;
	n = strlen(args);
	if (caps_has(b->caps, strlen(b->caps), "ID")) {
		char *text = malloc(3 + n);
		if (text != NULL) {
			memcpy(text, "ID ", 3);
			memcpy(text + 3, args, n);
			if (cmdq_push(&b->cmds, text, 3 + n, BK_CMD_SWALLOW, bk_id_cb, b) < 0)
				log_debug("S-%lu backend %s: ID not sent", b->sid, b->cfg->name);
			free(text);
		}
	}
	free(args);
}

/* The client's SASL message (b->pass), base64; NULL when out of memory. */
static char *bk_sasl_b64(const struct backend *b)
{
	size_t cap = B64_ENCODED_LEN(b->pass_len) + 1;
	char *enc = malloc(cap);

	if (enc != NULL && b64_encode((const uint8_t *)b->pass, b->pass_len, enc, cap) < 0) {
		free(enc);
		enc = NULL;
	}
	return enc;
}

void bk_send_login(struct backend *b)
{
	bool plain = caps_has(b->caps, strlen(b->caps), "AUTH=PLAIN");
	bool sasl_ir = caps_has(b->caps, strlen(b->caps), "SASL-IR");
	bool lp = caps_has(b->caps, strlen(b->caps), "LITERAL+");
	struct imap_creds cr = {b->authz, b->authz_len, b->user, b->user_len, b->pass, b->pass_len};
	const char *why = "out of memory";
	char *text = NULL;
	size_t len = 0;
	int r = -1;

	bk_enter(b, BK_LOGIN);
	bk_arm_timer(b, b->cfg->command_timeout);
	bk_send_id(b);
	if (caps_has(b->caps, strlen(b->caps), "LOGINDISABLED") && !plain) {
		bk_fail(b, "backend refuses plaintext login (LOGINDISABLED): use tls = starttls");
		return;
	}
	if (b->mech != NULL) {
		char *enc = bk_sasl_b64(b);
		char cmd[64];

		b->mech_failed = false;
		snprintf(cmd, sizeof(cmd), "AUTH=%s", b->mech);
		if (!caps_has(b->caps, strlen(b->caps), cmd)) {
			bk_wipe_free(&enc, enc ? strlen(enc) : 0);
			bk_wipe_free(&b->user, b->user_len);
			bk_wipe_free(&b->pass, b->pass_len);
			bk_finish(b, BK_RES_AUTH_FAILED,
			          "backend does not offer the SASL mechanism");
			return;
		}
		if (enc == NULL) {
			bk_fail(b, why);
			return;
		}
		snprintf(cmd, sizeof(cmd), "AUTHENTICATE %s", b->mech);
		if (sasl_ir) {
			size_t clen = strlen(cmd), elen = strlen(enc);
			text = malloc(clen + 1 + elen);
			if (text != NULL) {
				memcpy(text, cmd, clen);
				text[clen] = ' ';
				memcpy(text + clen + 1, enc, elen);
				len = clen + 1 + elen;
			}
			bk_wipe_free(&enc, elen);
		} else {
			b->plain_b64 = enc;
			r = bk_cmd_queue(b, cmd, 0, bk_login_cb);
			why = "command too long";
		}
	} else if (plain) {
		char *enc = imap_login_plain(&cr);

		if (enc == NULL) {
			bk_fail(b, why);
			return;
		}
		if (sasl_ir) {
			size_t elen = strlen(enc);
			text = malloc(19 + elen);
			if (text != NULL) {
				memcpy(text, "AUTHENTICATE PLAIN ", 19);
				memcpy(text + 19, enc, elen);
				len = 19 + elen;
			}
			bk_wipe_free(&enc, elen);
		} else {
			b->plain_b64 = enc;
			r = bk_cmd_queue(b, "AUTHENTICATE PLAIN", 0, bk_login_cb);
			why = "command too long";
		}
	} else {
		text = imap_login_cmd(&cr, b->cfg->master_separator, lp, &len, &why);
	}
	if (text != NULL) {
		r = cmdq_push(&b->cmds, text, len, BK_CMD_SECRET, bk_login_cb, b);
		if (r == 0)
			bk_cmd_write(b);
		why = "command too long";
		explicit_bzero(text, len);
		free(text);
	}
	/* What remains is in the queue or conn.out only, wiped once sent. */
	bk_wipe_free(&b->authz, b->authz_len);
	bk_wipe_free(&b->user, b->user_len);
	bk_wipe_free(&b->pass, b->pass_len);
	if (r < 0)
		bk_fail(b, why);
}

int backend_login(struct backend *b, const char *user, size_t user_len, const char *pass,
                  size_t pass_len)
{
	return backend_login_as(b, NULL, 0, user, user_len, pass, pass_len);
}

static int bk_store_login(struct backend *b, const char *mech, const char *authz, size_t authz_len,
                          const char *user, size_t user_len, const char *pass, size_t pass_len);

int backend_login_mech(struct backend *b, const char *mech, const char *user, size_t user_len,
                       const char *msg, size_t msg_len)
{
	return bk_store_login(b, mech, NULL, 0, user, user_len, msg, msg_len);
}

int backend_login_as(struct backend *b, const char *authz, size_t authz_len, const char *user,
                     size_t user_len, const char *pass, size_t pass_len)
{
	return bk_store_login(b, NULL, authz, authz_len, user, user_len, pass, pass_len);
}

static int bk_store_login(struct backend *b, const char *mech, const char *authz, size_t authz_len,
                          const char *user, size_t user_len, const char *pass, size_t pass_len)
{
	b->mech = mech;
	if (authz != NULL) {
		b->authz = malloc(authz_len + 1);
		if (b->authz == NULL)
			return -1;
		memcpy(b->authz, authz, authz_len);
		b->authz[authz_len] = '\0';
		b->authz_len = authz_len;
	}
	b->user = malloc(user_len + 1);
	b->pass = malloc(pass_len + 1);
	if (b->user == NULL || b->pass == NULL) {
		bk_forget_credentials(b);
		return -1;
	}
	memcpy(b->user, user, user_len);
	b->user[user_len] = '\0';
	memcpy(b->pass, pass, pass_len);
	b->pass[pass_len] = '\0';
	b->user_len = user_len;
	b->pass_len = pass_len;
	b->login_wanted = true;
	if (b->state == BK_READY) {
		bk_send_login(b);
		conn_update(&b->conn);
	}
	return 0;
}
