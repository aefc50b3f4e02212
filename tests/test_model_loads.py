"""A metatomic model file is loaded once per command (PET-MAD-sized models take seconds)."""

import torch

from symmon.frontends.demo import bundled_model_path


def _count_loads(monkeypatch):
    calls = []
    load = torch.jit.load

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("f"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", counting)
    return calls


def test_metatomic_calculator_and_orbit_model_for_load_the_file_once(monkeypatch):
    from symmon.adapters import orbit_model_for
    from symmon.frontends.calculator import metatomic_calculator

    path = bundled_model_path()
    calls = _count_loads(monkeypatch)
    calculator = metatomic_calculator(path, non_conservative=True)
    assert len(calls) == 1
    # as if MetatomicCalculator had loaded the file itself (todict, the log's model hash)
    assert calculator.todict()["model"] == path
    assert calculator.parameters["non_conservative"] is True  # the tiny PET has direct stress
    calls.clear()
    orbit_model = orbit_model_for(path)
    assert len(calls) == 1 and orbit_model.model_path == path
