/* report_sweep.c - fwrun report DIR...: results of runs and sweeps. */
#include "fwrun.h"

int cmd_report(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	return die(EXIT_USAGE, "report: not yet");
}
