# cuDNN's fused attention (src/kernels/cuda/attention_cudnn.cpp) for a target that holds the CUDA
# kernels: built when the cuDNN front end's headers (header-only; tools/setup.sh fetches them into
# .cudnn-frontend/include) and cudnn.h (the CUDA toolkit's, or that folder's copy) are there. cuDNN
# itself is loaded at run time. Without them the CUDA attention is the plain kernel only.
function(metapo_add_cudnn_attention target root)
  set(METAPO_CUDNN_FRONTEND_DIR "${root}/.cudnn-frontend/include" CACHE PATH
      "the cuDNN front end's include folder (cudnn_frontend.h)")
  find_path(METAPO_CUDNN_FE_INCLUDE cudnn_frontend.h PATHS ${METAPO_CUDNN_FRONTEND_DIR} NO_DEFAULT_PATH)
  find_path(METAPO_CUDNN_INCLUDE cudnn.h PATHS ${CUDAToolkit_INCLUDE_DIRS} ${METAPO_CUDNN_FRONTEND_DIR})
  if(METAPO_CUDNN_FE_INCLUDE AND METAPO_CUDNN_INCLUDE)
    target_sources(${target} PRIVATE ${root}/src/kernels/cuda/attention_cudnn.cpp)
    # SYSTEM: their headers' warnings are not ours (ours are errors).
    target_include_directories(${target} SYSTEM PRIVATE ${METAPO_CUDNN_FE_INCLUDE} ${METAPO_CUDNN_INCLUDE})
    # Dynamic loading: cuDNN is dlopen'd on the first attention, so the binary needs no libcudnn to
    # start; the front end's JSON support (and its copy of nlohmann-json) is left out.
    target_compile_definitions(${target} PRIVATE METAPO_HAVE_CUDNN NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING
                                                 CUDNN_FRONTEND_SKIP_JSON_LIB)
    target_link_libraries(${target} PUBLIC ${CMAKE_DL_LIBS})
    message(STATUS "metapo: cuDNN front end in ${METAPO_CUDNN_FE_INCLUDE}: attention through cuDNN's SDPA in bf16")
  else()
    message(STATUS "metapo: no cuDNN front end (tools/setup.sh fetches it): CUDA attention on the plain kernel only")
  endif()
endfunction()
