/*
 * sess_state — the legal moves between session states, as two tables (see
 * sess_state.h for the diagram). A move not in a table is a bug in the
 * caller, never a client's doing: session.c refuses it loudly.
 */
#include "sess_state.h"

#include <stddef.h>

#define BIT(s) (1u << (s))

static const unsigned state_moves[SESS_NSTATES] = {
    [SESS_NEW] = BIT(SESS_PROXYHDR) | BIT(SESS_HANDSHAKE) | BIT(SESS_PREAUTH) | BIT(SESS_CLOSING),
    [SESS_PROXYHDR] = BIT(SESS_HANDSHAKE) | BIT(SESS_PREAUTH) | BIT(SESS_CLOSING),
    [SESS_HANDSHAKE] = BIT(SESS_PREAUTH) | BIT(SESS_CLOSING),
    [SESS_PREAUTH] = BIT(SESS_STARTTLS) | BIT(SESS_LOGIN) | BIT(SESS_CLOSING),
    [SESS_STARTTLS] = BIT(SESS_HANDSHAKE) | BIT(SESS_CLOSING),
    [SESS_LOGIN] = BIT(SESS_PREAUTH) | BIT(SESS_PROXYING) | BIT(SESS_CLOSING),
    [SESS_PROXYING] = BIT(SESS_PARKED) | BIT(SESS_CLOSING),
    [SESS_PARKED] = BIT(SESS_WAKING) | BIT(SESS_CLOSING),
    [SESS_WAKING] = BIT(SESS_PROXYING) | BIT(SESS_CLOSING),
    [SESS_CLOSING] = BIT(SESS_DEAD),
    [SESS_DEAD] = 0,
};

static const unsigned px_moves[SESS_NPX] = {
    [PX_NORMAL] = BIT(PX_LIT_WAIT) | BIT(PX_LIT_OWN_WAIT) | BIT(PX_IDLE_WAIT) |
                  BIT(PX_LOGOUT_WAIT) | BIT(PX_WAKE_SYNC),
    [PX_LIT_WAIT] = BIT(PX_NORMAL),
    [PX_LIT_OWN_WAIT] = BIT(PX_NORMAL),
    [PX_IDLE_WAIT] = BIT(PX_IDLING) | BIT(PX_NORMAL),
    [PX_IDLING] = BIT(PX_NORMAL) | BIT(PX_PARK_DONE),
    [PX_LOGOUT_WAIT] = BIT(PX_LOGOUT_RESET),
    [PX_LOGOUT_RESET] = BIT(PX_LOGOUT_WAIT),
    [PX_PARK_DONE] = BIT(PX_NORMAL),
    [PX_WAKE_SYNC] = BIT(PX_NORMAL),
};

bool sess_move_ok(enum sess_state from, enum sess_state to)
{
	if ((unsigned)from >= SESS_NSTATES || (unsigned)to >= SESS_NSTATES)
		return false;
	return (state_moves[from] & BIT(to)) != 0;
}

bool sess_px_move_ok(enum sess_px from, enum sess_px to)
{
	if ((unsigned)from >= SESS_NPX || (unsigned)to >= SESS_NPX)
		return false;
	return (px_moves[from] & BIT(to)) != 0;
}

const char *sess_state_name(enum sess_state st)
{
	static const char *const names[SESS_NSTATES] = {
	    [SESS_NEW] = "NEW",
	    [SESS_PROXYHDR] = "PROXYHDR",
	    [SESS_HANDSHAKE] = "HANDSHAKE",
	    [SESS_PREAUTH] = "PREAUTH",
	    [SESS_STARTTLS] = "STARTTLS",
	    [SESS_LOGIN] = "LOGIN",
	    [SESS_PROXYING] = "PROXYING",
	    [SESS_PARKED] = "PARKED",
	    [SESS_WAKING] = "WAKING",
	    [SESS_CLOSING] = "CLOSING",
	    [SESS_DEAD] = "DEAD",
	};

	return (unsigned)st < SESS_NSTATES ? names[st] : "?";
}

const char *sess_px_name(enum sess_px px)
{
	static const char *const names[SESS_NPX] = {
	    [PX_NORMAL] = "NORMAL",
	    [PX_LIT_WAIT] = "LIT_WAIT",
	    [PX_LIT_OWN_WAIT] = "LIT_OWN_WAIT",
	    [PX_IDLE_WAIT] = "IDLE_WAIT",
	    [PX_IDLING] = "IDLING",
	    [PX_LOGOUT_WAIT] = "LOGOUT_WAIT",
	    [PX_LOGOUT_RESET] = "LOGOUT_RESET",
	    [PX_PARK_DONE] = "PARK_DONE",
	    [PX_WAKE_SYNC] = "WAKE_SYNC",
	};

	return (unsigned)px < SESS_NPX ? names[px] : "?";
}
