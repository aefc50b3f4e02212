"""Front-ends that only compose: ASE calculator, i-PI client, report, eval, analyze, purify, CLI."""
