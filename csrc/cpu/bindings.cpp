// Python bindings of the vimzoo CPU extension: the same entry points (and signatures) the 'cpu' backend of
// vimzoo/ops/backends/cpu.py calls; declarations and layout contract in kernels.h.
#include <torch/extension.h>

#include "kernels.h"

namespace vz = vimzoo::cpu;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vimzoo CPU selective-scan kernels (plain / reverse / LB / bidirectional; forward + backward)";
  m.def("scan_fwd", &vz::scan_fwd, "selective scan forward (gated by silu(z) when given); ValueError on NaN/inf input");
  m.def("scan_bwd", &vz::scan_bwd, "selective scan backward (recomputes states): du, ddelta, dA, dBt, dCt, dD, dz, dbias");
  m.def("bidir_fwd", &vz::bidir_fwd, "fused forward + reverse scan, gated by silu(z); ValueError on NaN/inf input");
  m.def("scan_fwd_tm", &vz::scan_fwd_tm, "scan_fwd for fp32 channel-contiguous (b, d, l) views; output likewise");
  m.def("bidir_fwd_tm", &vz::bidir_fwd_tm, "bidir_fwd for fp32 channel-contiguous (b, d, l) views; output likewise");
  m.def("causal_conv1d_tm", &vz::causal_conv1d_tm, "depthwise causal conv (+SiLU) on channel-contiguous (b, d, l) views");
  m.def("scan_bwd_tm", &vz::scan_bwd_tm, "scan_bwd for fp32 channel-contiguous views (training; no layout copies)");
  m.def("scan_bwd_tm_lowrank", &vz::scan_bwd_tm_lowrank, "scan_bwd_tm with delta = dt @ dt_proj_w.T formed inside: "
        "du, d dt, d dt_proj_w, dA, dBt, dCt, dD, dz, dbias (dz written into / added to dz_out when given)",
        py::arg("dout"), py::arg("u"), py::arg("dt"), py::arg("dt_proj_w"), py::arg("A"), py::arg("B"), py::arg("C"),
        py::arg("D"), py::arg("z"), py::arg("delta_bias"), py::arg("softplus"), py::arg("reverse"), py::arg("window"),
        py::arg("scale"), py::arg("dz_out") = py::none(), py::arg("dz_accumulate") = false);
  m.def("causal_conv1d_bwd_tm", &vz::causal_conv1d_bwd_tm, "causal conv (+SiLU) backward in one pass: dx, dw, db "
        "(dx written into / added to dx_out when given)", py::arg("dout"), py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("silu"), py::arg("reverse"), py::arg("dx_out") = py::none(),
        py::arg("accumulate") = false);
  m.def("mamba_inner_fwd", &vz::mamba_inner_fwd,
        "fused mixer core: xz -> conv -> x_proj -> scan -> gate; returns [out, x_proj output]");
  m.def("add_rms_norm_fwd", &vz::add_rms_norm_fwd, "fused residual add + RMSNorm: (normed, summed)");
  m.def("add_rms_norm_bwd", &vz::add_rms_norm_bwd, "backward of add_rms_norm_fwd from summed: (dsummed, dweight)");
  m.def("ssd_fwd", &vz::ssd_fwd, "Mamba-2 SSD scan, or Hydra's quasiseparable core when dt_b is given (chunked)");
  m.def("ssd_bwd", &vz::ssd_bwd, "backward of ssd_fwd: dx, dA, dD, dinit, then ddt, dB, dC per direction");
  m.def("built_with_openmp", [] {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
  }, "whether at::parallel_for in this build can fork (the extension must be compiled with OpenMP)");
}
