// Package of workspace-level tests; see the [[test]] targets.
