/* Deliberately broken plugins: one source, one defect per build, selected by
 * BAD_<DEFECT> (see CMakeLists.txt). Without a defect it is a valid optimizer
 * plugin "optim/bad" that does nothing, so each build differs from a good
 * plugin in exactly one way. BAD_DUP_ADAMW builds a valid plugin that claims
 * the name "optim/adamw". */
#include "fw/plugin.h"

static __attribute__((unused)) enum fw_status
bad_step(void *state, const struct fw_optim_group *groups, int n_groups, int64_t step,
	 struct fw_err *err)
{
	return FW_OK;
}

static const struct fw_optim_i iface __attribute__((unused)) = {
#if defined(BAD_IFACE_SMALL)
	.size = offsetof(struct fw_optim_i, step),      /* lacks a member of ABI 1.0 (and 1.7) */
#else
	.size = sizeof(struct fw_optim_i),
#endif
#if defined(BAD_STATE_NAMES)
	.n_state = 1,                                    /* ... but no state_names */
#endif
#if !defined(BAD_NO_STEP)
	.step = bad_step,
#endif
};

static const char *const colours[] = { "red", "green", NULL };

static const struct fw_option_def options[] __attribute__((unused)) = {
	{ "bad-level", FW_OPT_INT, "3", 0, 10, NULL, "an ordinary option" },
	{ "bad-colour", FW_OPT_CHOICE, "red", 0, -1, colours, "an ordinary choice" },
#if defined(BAD_OPT_TYPE)
	{ "bad-weird", (enum fw_opt_type)42, "1", 0, -1, NULL, "an option of no known type" },
#elif defined(BAD_OPT_CHOICES)
	{ "bad-shade", FW_OPT_CHOICE, "dark", 0, -1, NULL, "a choice without choices" },
#elif defined(BAD_OPT_NONAME)
	{ "", FW_OPT_INT, "1", 0, 10, NULL, "an option without a name" },
#elif defined(BAD_OPT_DEFAULT)
	{ "bad-count", FW_OPT_INT, "many", 0, 10, NULL, "an int whose default is not one" },
#elif defined(BAD_OPT_RANGE)
	{ "bad-count", FW_OPT_INT, "100", 0, 10, NULL, "a default outside its range" },
#elif defined(BAD_OPT_CHOICE_DEFAULT)
	{ "bad-shade", FW_OPT_CHOICE, "blue", 0, -1, colours, "a default not among the choices" },
#elif defined(BAD_OPT_DUP)
	{ "bad-level", FW_OPT_INT, "4", 0, 10, NULL, "the same name twice" },
#elif defined(BAD_OPT_COLLIDE)
	{ "seed", FW_OPT_INT, "1", 0, 10, NULL, "valid here, but fwrun has a --seed" },
#elif defined(BAD_OPT_CASE)
	{ "Lion_Beta1", FW_OPT_FLOAT, "0.9", 0, 1, NULL, "upper case and an underscore" },
#elif defined(BAD_OPT_COLLIDE_PLUGIN)
	{ "n-embd", FW_OPT_INT, "1", 0, 10, NULL, "valid here, but arch/tiny has one" },
#endif
};

#if defined(BAD_INIT_FAIL)
static enum fw_status bad_init(const struct fw_host *host, const struct fw_options *opts,
			       void **state, struct fw_err *err)
{
	return host->errorf(err, FW_ERR_INVALID,
			    "optim/bad: cannot start: the test asked this init to fail");
}
#endif

/* The descriptor fields a defect replaces. */
#if defined(BAD_SIZE_BIG)
#define D_SIZE (sizeof(struct fw_plugin) + 16)
#elif defined(BAD_SIZE_SMALL)
#define D_SIZE 8
#else
#define D_SIZE sizeof(struct fw_plugin)
#endif
#if defined(BAD_ABI_MAJOR)
#define D_MAJOR (FW_ABI_MAJOR + 1)
#else
#define D_MAJOR FW_ABI_MAJOR
#endif
#if defined(BAD_ABI_MINOR)
#define D_MINOR (FW_ABI_MINOR + 1)
#else
#define D_MINOR FW_ABI_MINOR
#endif
#if defined(BAD_FINGERPRINT)
#define D_FINGERPRINT (FW_ABI_FINGERPRINT ^ 0x5a5a5a5au)
#else
#define D_FINGERPRINT FW_ABI_FINGERPRINT
#endif
#if defined(BAD_KIND)
#define D_KIND ((enum fw_plugin_kind)99)
#else
#define D_KIND FW_KIND_OPTIM
#endif
#if defined(BAD_NAME)
#define D_NAME "arch/bad"
#elif defined(BAD_DUP_ADAMW)
#define D_NAME "optim/adamw"
#else
#define D_NAME "optim/bad"
#endif
#if defined(BAD_OPT_TABLE)
#define D_OPTIONS NULL
#else
#define D_OPTIONS options
#endif
#if defined(BAD_NO_IFACE)
#define D_IFACE NULL
#else
#define D_IFACE (&iface)
#endif
#if defined(BAD_INIT_FAIL)
#define D_INIT bad_init
#else
#define D_INIT NULL
#endif

static const struct fw_plugin plugin __attribute__((unused)) = {
	.size = D_SIZE,
	.abi_major = D_MAJOR,
	.abi_minor = D_MINOR,
	.abi_fingerprint = D_FINGERPRINT,
	.kind = D_KIND,
	.name = D_NAME,
	.version = "0.0.1",
	.description = "a deliberately broken plugin",
	.options = D_OPTIONS,
	.n_options = (int)(sizeof(options) / sizeof(options[0])),
	.iface = D_IFACE,
	.init = D_INIT,
};

#if defined(BAD_NO_ENTRY)
/* Exports something, but not the entry point. */
FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry_point(void);
FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry_point(void)
{
	return &plugin;
}
#elif defined(BAD_ENTRY_UNMARKED)
/* Not a defect since ABI 1.2: the entry point without FW_PLUGIN_EXPORT is
 * still exported, by fw/plugin.h's declaration. */
const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
#elif defined(BAD_ENTRY_NULL)
FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return NULL;
}
#else
FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
#endif
