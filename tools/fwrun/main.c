/* main.c - fwrun: the command line of fw; dispatches to one function per
 * command (cmd_*). Exit codes: 0 success, 1 runtime failure, 2 usage error. */
#include <stdlib.h>
#include <string.h>

#include "fwrun.h"

static const char usage[] =
	"usage: fwrun COMMAND [options]\n"
	"\n"
	"commands:\n"
	"  train      train a model from plugins on token shards\n"
	"  eval       mean loss of a checkpoint on validation shards (JSON on stdout)\n"
	"  generate   sample tokens from a checkpoint\n"
	"  plan       memory plan of a configuration, without training\n"
	"  list       every plugin found, with its options and defaults\n"
	"  import     Hugging Face model folder to an fw HDF5 file\n"
	"  export     fw HDF5 file to a Hugging Face model folder\n"
	"  merge      fold a LoRA adapter into its base model's weights file\n"
	"  export-adapter  LoRA adapter to Hugging Face PEFT's layout\n"
	"  tokenize   text or JSONL files to token shards (byte or GPT-2 BPE)\n"
	"  info       version, CPU features, oneDNN ISA, OpenMP threads, kernel per dtype\n"
	"  sweep      run a sweep file's trials (grid, random, seeds), parallel and resumable\n"
	"  report     results table and plots of runs and sweeps (markdown, CSV, HTML)\n"
	"\n"
	"Plugins are named KIND/NAME (arch/decoder, optim/adamw, ...) and found in\n"
	"FW_PLUGIN_PATH, the install directory, then the build tree.\n"
	"'fwrun COMMAND --help' describes each command.\n";

int main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
	    !strcmp(argv[1], "help")) {
		fputs(usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? EXIT_USAGE : EXIT_OK;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "--version")) {
		printf("fwrun (fw) %d.%d.%d, plugin ABI %d.%d\n", FW_VERSION_MAJOR, FW_VERSION_MINOR,
		       FW_VERSION_PATCH, FW_ABI_MAJOR, FW_ABI_MINOR);
		return EXIT_OK;
	}
	argc -= 2;
	argv += 2;
	if (!strcmp(cmd, "train"))
		return cmd_train(argc, argv);
	if (!strcmp(cmd, "eval"))
		return cmd_eval(argc, argv);
	if (!strcmp(cmd, "plan"))
		return cmd_plan(argc, argv);
	if (!strcmp(cmd, "list"))
		return cmd_list(argc, argv);
	if (!strcmp(cmd, "import"))
		return cmd_import(argc, argv);
	if (!strcmp(cmd, "export"))
		return cmd_export(argc, argv);
	if (!strcmp(cmd, "generate"))
		return cmd_generate(argc, argv);
	if (!strcmp(cmd, "merge"))
		return cmd_merge(argc, argv);
	if (!strcmp(cmd, "export-adapter"))
		return cmd_export_adapter(argc, argv);
	if (!strcmp(cmd, "tokenize"))
		return cmd_tokenize(argc, argv);
	if (!strcmp(cmd, "info"))
		return cmd_info(argc, argv);
	if (!strcmp(cmd, "sweep"))
		return cmd_sweep(argc, argv);
	if (!strcmp(cmd, "report"))
		return cmd_report(argc, argv);
	static const char *const cmds[] = { "train", "eval", "generate", "plan", "list",
					    "import", "export", "merge", "export-adapter", "tokenize",
					    "info", "sweep", "report" };
	const char *near = fw_nearest_name(cmd, cmds, (int)(sizeof(cmds) / sizeof(cmds[0])));
	return fail(FW_ERR_INVALID, "unknown command '%s'%s%s%s (see fwrun --help)", cmd,
		   near ? "; did you mean '" : "", near ? near : "", near ? "'?" : "");
}
