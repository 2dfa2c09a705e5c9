import sys; sys.path.insert(0,'tests')
import noise_distinguishers as N, torch
x=N.background_input(784,600)
r=N.old_float32_rows(x,0.25,5,0); print(N.angle_lattice_score(r,600,True), N.angle_lattice_score(r,600))
r=N.gaussian_rows(x,0.25,2000,1); s=N.angle_lattice_score(r,600,True); print(s.min(), s.max(), s.std())
r=N.gaussian_rows(x,0.25,512,1); print(N.radius_lattice_score(r,600,0.25), N.angle_lattice_score(r,600))
