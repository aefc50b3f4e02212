"""Write init.xyz (the symmon demo Cu/Ni cell) and input-ffdirect.xml (needs absolute paths).

    python make_inputs.py            # then see README.md
"""

from pathlib import Path

import ase.io

from symmon.frontends.demo import bundled_model_path, demo_structure
from symmon.frontends.ipi import pes_path

HERE = Path(__file__).resolve().parent

ase.io.write(HERE / "init.xyz", demo_structure(seed=0))
text = (HERE / "input.xml").read_text()
start, end = text.index("<ffsocket"), text.index("</ffsocket>") + len("</ffsocket>")
direct = f"""<ffdirect name='symmon'>
    <pes> custom </pes>
    <pes_path> {pes_path()} </pes_path>
    <parameters> {{template: init.xyz, model: {bundled_model_path()}, log: direct.h5, overwrite: true, non_conservative: true, threads: 1, every: 1, full_every: 50}} </parameters>
  </ffdirect>"""
(HERE / "input-ffdirect.xml").write_text(text[:start] + direct + text[end:])
print("wrote", HERE / "init.xyz", "and", HERE / "input-ffdirect.xml")
print("model:", bundled_model_path())
