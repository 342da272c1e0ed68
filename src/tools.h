/*
 * tools.h - the subcommands beside serving an app.
 *
 *   sluice check APP_DIR   loads the app as a worker would (same module path,
 *                          same library, same option checks), without
 *                          listening or connecting to Redis, and lists its
 *                          routes; a load error is printed as file:line.
 *   sluice new NAME        makes a new app in the new folder NAME from the
 *                          templates in the Lua library
 *                          (lua/sluice/templates/app).
 */
#ifndef SLUICE_TOOLS_H
#define SLUICE_TOOLS_H

/* Runs `sluice check`; argv is main's (argv[1] is "check") and lua_dir the
 * project's lua/ folder.  Returns the exit code: 0 when the app loads (its
 * routes and a summary on stdout), 1 when it does not (the Lua error on
 * stderr), 2 for a usage mistake or an app folder that does not exist. */
int tools_check(int argc, char **argv, const char *lua_dir);

/* Runs `sluice new`; argv is main's (argv[1] is "new") and lua_dir the
 * project's lua/ folder, whose templates it copies.  Returns the exit code:
 * 0 once the app is made (each file named on stdout, then the commands that
 * run it and its tests), 1 when NAME exists or a file cannot be written,
 * 2 for a usage mistake. */
int tools_new(int argc, char **argv, const char *lua_dir);

#endif
